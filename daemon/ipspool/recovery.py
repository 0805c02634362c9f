"""Start-up recovery: finish or undo whatever a crash interrupted.

Run once, before any worker starts, on a ``Spool`` that is open:

- results/.parts/ holds only unfinished work of earlier runs: emptied, run
  folders and all (before the results are looked at: a result still linked
  to its part has two links);
- active/JOB with failed/JOB.error.json that we wrote for JOB: finish moving
  it to failed/;
- active/JOB with results/JOB.summary.json of ours but no results/JOB.jsonl (or JOB.csv):
  the commit was cut between the two links (the summary goes first), so the
  summary is removed and the job processed again;
- active/JOB with results/JOB.jsonl (or JOB.csv) that we could have written (a regular
  file of ours with one link): published before the crash, so only step 3
  (retire) is left. Anything else at that name (a symlink, another user's
  file, a hard link) is not our result: the job fails as ``result_exists``,
  logged as ``file.failed``, and is in none of the returned lists;
- any other active/JOB is processed again; under a new name
  (``spool.name_conflict``) if some other entry holds one of its derived
  names, so that nothing of that entry is overwritten.

A step that fails (ENOSPC: a directory needs a new block on a full disk)
leaves that entry in active/, is logged (``spool.recover_failed``) and is
tried again at the next start; it never stops the start.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass, field

import orjson

from ipspool.fsops import rename_noreplace_at
from ipspool.logs import get_logger
from ipspool.spool import (
    ERROR_SUFFIX,
    RESULT_SUFFIXES,
    SUMMARY_SUFFIX,
    Spool,
    entry_exists,
    fsync_dir,
    job_entries,
    printable,
)

__all__ = ["Recovered", "recover"]

_RECORD_MAX = 64 << 10  # an error record we wrote is far smaller; anything larger is not ours
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_RMDIR_TRIES = 100      # a late orphan may create a part while its run folder is being emptied


@dataclass
class Recovered:
    redo: list[str] = field(default_factory=list)
    finished: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    renamed: bool = False
    unlinked: bool = False  # a summary without its result was removed from results/


def recover(spool: Spool, keep: bool) -> tuple[list[str], list[str], list[str]]:
    """Recover the spool; return (redo, finished, failed) job names."""
    return _Recovery(spool, keep).run()


class _Recovery:
    def __init__(self, spool: Spool, keep: bool) -> None:
        self.spool = spool
        self.fds = spool.fds
        self.keep = keep
        self.log = get_logger()
        self.step = "fail"  # what one() is doing, for spool.recover_failed
        self.trusted: dict[str, bool] = {}

    def run(self) -> tuple[list[str], list[str], list[str]]:
        self.clean_unfinished()
        # Decisions below trust entries of results/ (a published result),
        # failed/ (a failure record) and done/ (a retired input): make what
        # is there durable first, as a crash may have come before their
        # fsync. A directory whose fsync fails is not trusted this start.
        self.trusted = {where: self.sync_first(where) for where in ("results", "failed", "done")}
        out = Recovered()
        for job_name in sorted(os.listdir(self.fds["active"])):
            self.step = "fail"
            try:
                self.one(job_name, out)
            except OSError as exc:
                self.log.error("spool.recover_failed", file=printable(job_name), step=self.step,
                               error=exc.strerror or str(exc),
                               note="left in active/; looked at again at the next start")
        self.sync(out)
        return out.redo, out.finished, out.failed

    def one(self, job_name: str, out: Recovered) -> None:
        """Decide one entry of active/ (``self.step`` says which step it is in)."""
        # The error record first: a job that failed as result_exists has
        # someone else's file at its result name, and a published job never
        # has an error record.
        if not (self.trusted["results"] and self.trusted["failed"]):
            raise OSError(errno.EIO, "a directory it depends on could not be made durable")
        if self.own_error_record(job_name):
            rename_noreplace_at(job_name, job_name, self.fds["active"], self.fds["failed"])
            out.failed.append(job_name)
            return
        result = next((job_name + suffix for suffix in RESULT_SUFFIXES
                       if entry_exists(job_name + suffix, self.fds["results"])), None)
        if result is not None:
            if self.own_file("results", result) is None:
                detail = "a file we did not write holds the result name; nothing was overwritten"
                error_file = self.spool.fail(job_name, "result_exists", detail, {"file": job_name})
                self.log.error("file.failed", file=printable(job_name), job=printable(job_name),
                               reason="result_exists", detail=detail, error_file=printable(error_file))
                return
            self.step = "retire"
            self.spool.retire_input(job_name, self.keep)
            out.finished.append(job_name)
            return
        if self.own_file("results", job_name + SUMMARY_SUFFIX) is not None:
            self.step = "summary"
            os.unlink(job_name + SUMMARY_SUFFIX, dir_fd=self.fds["results"])
            out.unlinked = True
        if self.name_conflicts(job_name):
            self.step = "rename"
            new_name = self.spool.unique_job_name(job_name)
            rename_noreplace_at(job_name, new_name, self.fds["active"], self.fds["active"])
            out.renamed = True
            self.log.warning("spool.name_conflict", file=printable(job_name), job=printable(new_name),
                             note="another entry holds a name derived from it; processed under the new name")
            out.redo.append(new_name)
            return
        out.redo.append(job_name)

    def sync_first(self, where: str) -> bool:
        try:
            fsync_dir(self.fds[where])
        except OSError as exc:
            self.log.error("spool.recover_failed", file=f"{where}/", step="sync", error=exc.strerror or str(exc),
                           note="entries of active/ are left for the next start")
            return False
        return True

    def sync(self, out: Recovered) -> None:
        # Destination directories first, active/ last: an input is never
        # durably gone from active/ while not yet durably where it went.
        syncs = [("results", out.unlinked), ("done", self.keep and bool(out.finished)), ("failed", bool(out.failed)),
                 ("active", bool(out.finished or out.failed or out.renamed))]
        for where, needed in syncs:
            if needed:
                try:
                    fsync_dir(self.fds[where])
                except OSError as exc:
                    self.log.error("spool.recover_failed", file=f"{where}/", step="sync",
                                   error=exc.strerror or str(exc), note="recovered moves may not survive a power cut")

    # -- what is ours -------------------------------------------------------------

    def own_file(self, where: str, entry: str) -> os.stat_result | None:
        """lstat of ``entry`` if it is a file the daemon could have written: regular, ours, one link."""
        try:
            st = os.stat(entry, dir_fd=self.fds[where], follow_symlinks=False)
        except FileNotFoundError:
            return None
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_nlink != 1:
            return None
        return st

    def own_error_record(self, job_name: str) -> bool:
        """Is failed/JOB.error.json a record the daemon wrote for this job?

        Our own file (as ``own_file``) holding a JSON object whose ``job`` is
        this job's name: anything else at that name (an input of an older
        version named like a record, a file an operator left) is not proof
        that the job failed.
        """
        name = job_name + ERROR_SUFFIX
        st = self.own_file("failed", name)
        if st is None or st.st_size > _RECORD_MAX:
            return False
        try:
            fd = os.open(name, _FILE_FLAGS, dir_fd=self.fds["failed"])
        except OSError:
            return False
        try:
            data = os.read(fd, _RECORD_MAX + 1)
        finally:
            os.close(fd)
        try:
            info = orjson.loads(data)
        except orjson.JSONDecodeError:
            return False
        return isinstance(info, dict) and info.get("job") == printable(job_name)

    def name_conflicts(self, job_name: str) -> bool:
        """Does some other entry hold a name derived from this job's (see ``job_entries``)?"""
        others = [(where, entry) for where, entry in job_entries(job_name) if (where, entry) != ("active", job_name)]
        return job_name.endswith(ERROR_SUFFIX) or any(entry_exists(entry, self.fds[where]) for where, entry in others)

    # -- leftovers ----------------------------------------------------------------

    def clean_unfinished(self) -> None:
        parts = self.fds["all_parts"]
        for entry in os.listdir(parts):
            st = os.stat(entry, dir_fd=parts, follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                _remove_run_folder(parts, entry)
            else:
                os.unlink(entry, dir_fd=parts)
        for entry in os.listdir(self.fds["failed"]):
            if entry.startswith(".") and entry.endswith(".tmp"):
                os.unlink(entry, dir_fd=self.fds["failed"])


def _remove_run_folder(parts: int, name: str) -> None:
    """Empty and remove an earlier run's parts folder, even while an orphan still writes into it."""
    fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parts)
    try:
        for _ in range(_RMDIR_TRIES):
            for entry in os.listdir(fd):
                os.unlink(entry, dir_fd=fd)
            try:
                os.rmdir(name, dir_fd=parts)
            except OSError as exc:
                if exc.errno != errno.ENOTEMPTY:
                    raise
            else:
                return
    finally:
        os.close(fd)
    raise OSError(errno.ENOTEMPTY, f"results/.parts/{name} keeps filling up")
