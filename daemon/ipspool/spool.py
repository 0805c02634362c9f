"""The on-disk protocol: every move of a file through the spool.

    tmp/ -> incoming/ (or incoming/SUB/) -> active/ -> done/ (or deleted) | failed/ + NAME.error.json
    results/NAME.jsonl (or NAME.csv) and NAME.summary.json (written in results/.parts/, fsync'd, linked in)

rename() within one filesystem is the commit point of every step, and each
step is made durable (file fsync, then the directories it touched) before the
next one starts. The order is chosen so that a crash at any point leaves a
state that start-up recovery (``Spool.recover``) finishes without loss or
duplication:

1. the result is written to a part file and fsync'd;
2. its summary is linked to results/JOB.summary.json, then the result to
   results/JOB.jsonl (link() never overwrites), and results/ is fsync'd once
   for both: from here on the result exists, and recovery sees it; a summary
   found without its result was cut short here, and recovery removes it;
3. the input is renamed active/JOB -> done/JOB (or unlinked) and both
   directories are fsync'd.

A producer may also rename its file into a subdirectory of incoming/ of its
own (``incoming/SUB/NAME``, one level; ``producer_subdir``); its job is then
named ``SUB~NAME`` (``job_stem``), so active/, done/, failed/ and results/
stay flat, and the job name alone still says where the file came from
(``job_source``): start-up recovery reads it again with the same rule.

A job's name is the input's name, made unique at claim time: it is free only
if every name derived from it is (``job_entries``: active/JOB, done/JOB,
failed/JOB, failed/JOB.error.json, results/JOB.jsonl, results/JOB.csv,
results/JOB.summary.json), and a name ending in
``.error.json`` is never a job's, so no input in failed/ can ever stand where
another job's error record goes. results/JOB.jsonl and failed/JOB.error.json
therefore belong to exactly one input, and a crash between steps 2 and 3 is
recognised, not redone. Recovery still checks that what it finds there is
the daemon's own (a regular single-link file of ours; an error record that
names the job) before it trusts it.

All operations go through directory file descriptors opened with O_NOFOLLOW,
and files are opened with O_NOFOLLOW|O_NONBLOCK: nothing planted in the spool
can redirect a read or a write, and a FIFO cannot block the daemon.
"""

from __future__ import annotations

import errno
import os
import re
import stat
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from ipspool.fsops import rename_noreplace_at, write_all

__all__ = [
    "LEASED",
    "RESULT_SUFFIXES",
    "Claimed",
    "Incoming",
    "InputRejected",
    "Spool",
    "SpoolError",
    "ensure_runtime_dir",
    "entry_exists",
    "fsync_dir",
    "job_entries",
    "job_name_candidates",
    "job_origin",
    "job_source",
    "job_stem",
    "path_problems",
    "printable",
    "producer_subdir",
]

SUBDIRS = ("tmp", "incoming", "active", "done", "failed")
RESULT_SUFFIX = ".jsonl"
SUMMARY_SUFFIX = ".summary.json"
RESULT_SUFFIXES = (RESULT_SUFFIX, ".csv")  # a rule may ask for CSV output (docs/inputs.md)
ERROR_SUFFIX = ".error.json"
PARTS = ".parts"
_COPY_PIECE = 64 << 20
_SYNC_GROUP = 64  # files write_parts holds open at once
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_NAME_MAX = 255
SUBDIR_SEP = "~"  # incoming/SUB/NAME is job SUB~NAME
# A producer subdirectory's name: what an operator would type, nothing a
# shell, a URL or the job name's separator would trip on.
_SUBDIR_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")
_NOT_REGULAR = {
    stat.S_IFDIR: "a directory",
    stat.S_IFIFO: "a FIFO",
    stat.S_IFSOCK: "a socket",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFLNK: "a symbolic link",
}


LEASED = ("another process holds a lease on it (it still has the file open); "
          "producers must close the file before renaming it into incoming/")


class SpoolError(Exception):
    """The spool itself is unusable (missing, not a directory, no permission)."""


@dataclass(frozen=True)
class InputRejected(Exception):
    """A claimed input that must go to failed/ unread, with a reason code."""

    reason: str
    detail: str


@dataclass(frozen=True)
class Claimed:
    """An input moved into active/, checked and ready to split."""

    name: str      # the name it arrived with in incoming/
    job_name: str  # its unique name in active/, done/ or failed/ and results
    path: str      # absolute path in active/
    size: int
    dev: int
    ino: int
    claimed_at: float
    mtime: float
    ctime_ns: int  # a rewrite that restores size and mtime still moves the ctime


def job_base(name: str) -> str:
    """A name short enough that JOB.N.error.json still fits in NAME_MAX.

    The daemon and `ipspool submit` both use it, so a long name a producer
    submits is the name its result gets.
    """
    room = _NAME_MAX - len(ERROR_SUFFIX) - 12
    # fsencode: a name need not be UTF-8 (its bytes come back as surrogates).
    raw = os.fsencode(name)
    return name if len(raw) <= room else os.fsdecode(raw[:room])


def producer_subdir(name: str) -> bool:
    """May a directory of this name in incoming/ be a producer's subdirectory?

    1 to 64 characters of ``A-Z a-z 0-9 _ . -``, not starting with ``.`` or
    ``-``. A directory named otherwise is an input like any other (it goes to
    failed/ as ``not_regular_file``).
    """
    return _SUBDIR_NAME.fullmatch(name) is not None


def job_stem(name: str) -> str:
    """The name a job is made from: ``SUB/NAME`` (a file in a producer subdirectory) becomes ``SUB~NAME``."""
    sub, sep, base = name.partition("/")
    return f"{sub}{SUBDIR_SEP}{base}" if sep else name


def job_source(name: str) -> tuple[str, str]:
    """(subdirectory, name) a file came from, given its name in incoming/ or its job name.

    ``SUB/NAME`` and ``SUB~NAME`` are both (SUB, NAME) when SUB is a valid
    subdirectory name; anything else is ("", name). The job name carries the
    subdirectory, so a job recovered at start-up gets the rule it got when
    it was claimed; a file dropped at the top level under a name of that
    shape is read as if it had come from that subdirectory.
    """
    for sep in ("/", SUBDIR_SEP):
        sub, found, base = name.partition(sep)
        if found and base and producer_subdir(sub):
            return sub, base
    return "", name


def job_origin(job_name: str) -> str:
    """The name in incoming/ a job (recovered from active/, so known by its job name) most likely came
    from: ``SUB/NAME`` for ``SUB~NAME``; the job name itself otherwise."""
    sub, base = job_source(job_name)
    return f"{sub}/{base}" if sub else job_name


def job_entries(job_name: str) -> tuple[tuple[str, str], ...]:
    """Every (directory, entry) that belongs to a job: its name is free only if all are.

    "results" is the results directory, the others are spool subdirectories.
    """
    return (
        ("active", job_name),
        ("done", job_name),
        ("failed", job_name),
        ("failed", job_name + ERROR_SUFFIX),
        *(("results", job_name + suffix) for suffix in RESULT_SUFFIXES),
        ("results", job_name + SUMMARY_SUFFIX),
    )


def job_name_candidates(name: str) -> Iterator[str]:
    """The names a job for input ``name`` may take, in order of preference.

    ``name`` itself unless it is too long or ends in ``.error.json`` (the
    name of some other job's error record in failed/), then ``BASE.1``,
    ``BASE.2``, ... The daemon and ``ipspool submit`` both use it, so a
    producer's choice is the name the daemon keeps.
    """
    base = job_base(name)
    if base == name and not name.endswith(ERROR_SUFFIX):
        yield base
    for n in range(1, 1_000_000):
        yield f"{base}.{n}"


def fsync_dir(fd: int) -> None:
    os.fsync(fd)


def ensure_runtime_dir(path: Path) -> None:
    """Create the runtime directory (mode 0750, parents as needed) or say why it cannot be used.

    Raises SpoolError naming ``spool.runtime_dir``: ``ipspool run`` exits SPOOL_ERROR (73).
    """
    problem = _directory_problem(path)
    if problem is None:
        try:
            path.mkdir(parents=True, exist_ok=True, mode=0o750)
        except OSError as exc:
            problem = f"cannot be created: {exc.strerror}"
    if problem is None and not os.access(path, os.W_OK | os.X_OK):
        problem = "is not writable by this user"
    if problem is not None:
        raise SpoolError(f"spool.runtime_dir: {path} {problem}")


def printable(name: str) -> str:
    """A file name as text for JSON and logs: bytes that are not UTF-8 shown as \\xNN."""
    try:
        return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate that no byte stands for
        return name.encode("utf-8", "backslashreplace").decode("utf-8")


def _open_dir(path: Path) -> int:
    try:
        return os.open(path, _DIR_FLAGS)
    except FileNotFoundError:
        raise SpoolError(f"{path}: does not exist") from None
    except NotADirectoryError:
        raise SpoolError(f"{path}: not a directory") from None
    except PermissionError:
        raise SpoolError(f"{path}: permission denied") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise SpoolError(f"{path}: is a symbolic link; refusing to follow it") from None
        raise SpoolError(f"{path}: {exc.strerror}") from None


def entry_exists(name: str, dir_fd: int) -> bool:
    """Is there an entry of that name (of any kind, links not followed) in the directory?"""
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def _directory_problem(path: Path) -> str | None:
    """Why this user cannot use, or create, a directory at ``path``; None if it can."""
    if path.is_symlink():
        return "is a symbolic link; refusing to follow it"
    if path.exists():
        usable, prefix = path, ""  # the caller names the path already
    else:
        usable = next(p for p in path.parents if p.exists())
        prefix = f"cannot be created: {usable} "
    if not usable.is_dir():
        return f"{prefix}is not a directory"
    if not os.access(usable, os.W_OK | os.X_OK):
        return f"{prefix}is not writable by this user"
    return None


def path_problems(spool_dir: Path, results_dir: Path, runtime_dir: Path, log_file: str) -> list[str]:
    """What ``check-config`` reports about the configured paths, each naming its key.

    Checked as the user running the check: run it as the service user.
    """
    problems = []
    for key, path in (("spool.dir", spool_dir), ("spool.results_dir", results_dir),
                      ("spool.runtime_dir", runtime_dir)):
        problem = _directory_problem(path)
        if problem:
            problems.append(f"{key}: {path} {problem}")
    if log_file:
        path = Path(log_file)
        if path.exists() and not (path.is_file() and os.access(path, os.W_OK)):
            problems.append(f"log.file: {path} is not a writable regular file")
        elif not path.exists() and not (path.parent.is_dir() and os.access(path.parent, os.W_OK | os.X_OK)):
            problems.append(f"log.file: {path} cannot be created: {path.parent} is not a writable directory")
    return problems


# POSIX ACLs in their extended-attribute form (linux/posix_acl_xattr.h):
# a version, then (tag, perm, id) entries sorted by tag, then id.
_ACL_DEFAULT_XATTR = "system.posix_acl_default"
_ACL_VERSION = 2
_ACL_USER_OBJ, _ACL_USER, _ACL_GROUP_OBJ, _ACL_MASK, _ACL_OTHER = 0x01, 0x02, 0x04, 0x10, 0x20
_ACL_UNDEFINED_ID = 0xFFFFFFFF
_ACL_R, _ACL_RWX = 4, 7


def private_default_acl(reader_uid: int | None) -> bytes:
    """The default ACL of tmp/ and incoming/: a file is its owner's and ``reader_uid``'s, not its group's.

    ``default:user::rwx, default:user:READER:r--, default:group::---,
    default:mask::r--, default:other::---``: whatever mode a producer creates
    a file with (0640, 0666...), its group (the producer group) gets nothing,
    other producers nothing, the service user read; the mode bits then show
    the mask (0640 reads "owner rw, named entries r").
    """
    entries = [(_ACL_USER_OBJ, _ACL_RWX, _ACL_UNDEFINED_ID)]
    if reader_uid is not None:
        entries.append((_ACL_USER, _ACL_R, reader_uid))
    entries += [(_ACL_GROUP_OBJ, 0, _ACL_UNDEFINED_ID), (_ACL_MASK, _ACL_R, _ACL_UNDEFINED_ID),
                (_ACL_OTHER, 0, _ACL_UNDEFINED_ID)]
    return _acl_xattr(entries)


def _plain_access_acl(path: Path) -> None:
    """Set the access ACL ``user::rwx, group::rwx, other::---``: the kernel keeps no ACL for it, only
    the mode rwxrwx--- with the setgid and sticky bits as they were (acl(5), minimal ACL)."""
    minimal = [(_ACL_USER_OBJ, _ACL_RWX, _ACL_UNDEFINED_ID), (_ACL_GROUP_OBJ, _ACL_RWX, _ACL_UNDEFINED_ID),
               (_ACL_OTHER, 0, _ACL_UNDEFINED_ID)]
    try:
        os.setxattr(path, "system.posix_acl_access", _acl_xattr(minimal), follow_symlinks=False)
    except OSError as exc:
        if exc.errno not in (errno.ENOTSUP, errno.EOPNOTSUPP):
            raise


def _acl_xattr(entries: list[tuple[int, int, int]]) -> bytes:
    """An ACL's extended-attribute form: a version, then (tag, perm, id) entries (``acl_entries`` reads it)."""
    import struct

    return struct.pack("<I", _ACL_VERSION) + b"".join(struct.pack("<HHI", *e) for e in entries)


def acl_entries(raw: bytes) -> list[tuple[int, int, int]]:
    """(tag, perm, id) of an ACL in its extended-attribute form."""
    import struct

    return [struct.unpack_from("<HHI", raw, 4 + 8 * i) for i in range((len(raw) - 4) // 8)]


def ensure_private_default_acl(path: Path, reader_uid: int | None) -> bool:
    """Give ``path`` the default ACL of ``private_default_acl``; False where the filesystem has no ACLs.

    Written only when it differs, so a sandbox that forbids it is fine once
    tmpfiles.d (``a+`` lines) has set it.
    """
    wanted = private_default_acl(reader_uid)
    try:
        current = os.getxattr(path, _ACL_DEFAULT_XATTR, follow_symlinks=False)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return False
        if exc.errno != errno.ENODATA:
            raise
        current = b""
    if current and (reader_uid is None or (_ACL_USER, _ACL_R, reader_uid) in acl_entries(current)) \
            and (_ACL_GROUP_OBJ, 0, _ACL_UNDEFINED_ID) in acl_entries(current) \
            and (_ACL_OTHER, 0, _ACL_UNDEFINED_ID) in acl_entries(current):
        return True
    try:
        os.setxattr(path, _ACL_DEFAULT_XATTR, wanted, follow_symlinks=False)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return False
        raise
    return True


def make_subdir(path: Path, producer_gid: int | None, acl_unsupported: list[str]) -> None:
    """A producer subdirectory of incoming/, made with incoming/'s mode, group and default ACL."""
    if path.is_symlink():
        raise SpoolError(f"{path}: is a symbolic link; refusing to follow it")
    try:
        # Sticky at birth; setgid and the group come from incoming/. No chmod
        # is needed then, which the unit's sandbox would refuse for a setgid
        # mode (RestrictSUIDSGID).
        path.mkdir(mode=0o1770 if producer_gid is not None else 0o750)
    except FileExistsError:
        if not path.is_dir():
            raise
    else:
        if producer_gid is not None:
            # It inherited incoming/'s default ACL as its access ACL too, whose
            # empty group entry would lock producers out: give it the plain
            # rwxrwx--- of incoming/ instead.
            _plain_access_acl(path)
    if producer_gid is not None:
        open_to_producers(path, producer_gid, acl_unsupported)


def open_to_producers(path: Path, producer_gid: int, acl_unsupported: list[str]) -> None:
    """Give tmp/, incoming/ (or a producer subdirectory) the producer group, mode 3770 and the private
    default ACL; a directory on a filesystem without ACLs is added to ``acl_unsupported``."""
    # setgid: what producers write belongs to their group, which the daemon
    # is in; sticky: no producer can rename or delete another's file.
    # Touched only when wrong, so a sandbox that forbids chown/setgid chmod
    # (the unit's) is fine once tmpfiles.d has set them.
    st = path.stat()
    if st.st_gid != producer_gid:
        os.chown(path, -1, producer_gid)
    if stat.S_IMODE(st.st_mode) != 0o3770:
        path.chmod(0o3770)
    # A producer's file is readable by itself and the service, not by the
    # producer group (other producers): a default ACL. Root reads without
    # it, so it names the service user only when the daemon is not root. (A
    # directory a producer makes in incoming/ inherits that ACL, which gives
    # the service no write access to it: producer subdirectories are made by
    # the daemon, from spool.subdirs.)
    euid = os.geteuid()
    if not ensure_private_default_acl(path, euid if euid != 0 else None):
        acl_unsupported.append(str(path))


class OwnerCheck:
    """May a file owned by ``uid`` be processed? Members of the producer group, the service user, root.

    Membership comes from the user and group databases (primary and
    supplementary groups: getgrouplist), each answer kept for a minute.
    """

    TTL = 60.0

    def __init__(self, producer_gid: int) -> None:
        self.gid = producer_gid
        self.trusted = {0, os.geteuid()}
        self.cache: dict[int, tuple[bool, float]] = {}

    def __call__(self, uid: int) -> bool:
        if uid in self.trusted:
            return True
        now = time.monotonic()
        known = self.cache.get(uid)
        if known is not None and now - known[1] < self.TTL:
            return known[0]
        import pwd

        try:
            user = pwd.getpwuid(uid)
            member = self.gid in os.getgrouplist(user.pw_name, user.pw_gid)
        except (KeyError, OSError):
            member = False  # no such user: nobody the administrator let submit
        self.cache[uid] = (member, now)
        return member


class Incoming:
    """incoming/ and its producer subdirectories: what waits there, and where each name is.

    A producer subdirectory (``producer_subdir``; the first ``max_subdirs``
    in name order) is not a name itself: its entries are, as ``SUB/NAME``.
    Each is opened without following links whenever it is used, never kept
    open: a producer may rename it away or swap it for a link at any time.
    """

    def __init__(self) -> None:
        self.fd = -1  # incoming/ (Spool.open)
        self.max_subdirs = 0  # spool.max_subdirs; 0: a directory is an input like any other
        self.subdirs: dict[str, tuple[int, int]] = {}  # the subdirectories the last scan read, by (dev, inode)
        self.over_cap: list[str] = []  # and those it left alone
        self.unreadable: dict[str, str] = {}  # and those it could not read, with why
        # Subdirectories claimed from since the last sync, held open until it: the
        # fsync must reach the directory the file left, whatever its name is by then.
        self.touched: dict[str, int] = {}

    def scan(self, path: Path) -> Iterator[tuple[str, float]]:
        subdirs: dict[str, tuple[int, int]] = {}
        with os.scandir(path) as entries:
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if self.max_subdirs and stat.S_ISDIR(st.st_mode) and producer_subdir(entry.name):
                    subdirs[entry.name] = (st.st_dev, st.st_ino)
                    continue
                yield entry.name, st.st_mtime
        names = sorted(subdirs)
        self.subdirs = {sub: subdirs[sub] for sub in names[:self.max_subdirs]}
        self.over_cap = names[self.max_subdirs:]
        self.unreadable = {}
        for sub in self.subdirs:
            try:
                fd = self.subdir_fd(sub)
            except FileNotFoundError:
                continue  # gone since the listing
            except OSError as exc:  # replaced by a link or a file, or no search permission for us
                self.unreadable[sub] = exc.strerror or str(exc)
                continue
            try:
                yield from self._scan_subdir(sub, fd)
            except OSError as exc:
                self.unreadable[sub] = exc.strerror or str(exc)
            finally:
                os.close(fd)

    @staticmethod
    def _scan_subdir(sub: str, fd: int) -> Iterator[tuple[str, float]]:
        with os.scandir(fd) as entries:
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                try:
                    mtime = entry.stat(follow_symlinks=False).st_mtime
                except FileNotFoundError:
                    continue
                yield f"{sub}/{entry.name}", mtime

    def subdir_fd(self, sub: str) -> int:
        return os.open(sub, _DIR_FLAGS, dir_fd=self.fd)

    def where(self, name: str) -> tuple[int, str]:
        """(directory fd, entry) of a name from ``scan``; hand the fd back to ``done_with``."""
        sub, sep, entry = name.partition("/")
        return (self.subdir_fd(sub), entry) if sep else (self.fd, name)

    def done_with(self, fd: int) -> None:
        if fd != self.fd:
            os.close(fd)

    def mtime(self, name: str) -> float:
        try:
            fd, entry = self.where(name)
        except OSError:
            return -1.0
        try:
            return os.stat(entry, dir_fd=fd, follow_symlinks=False).st_mtime
        except OSError:
            return -1.0
        finally:
            self.done_with(fd)

    def claimed_from(self, name: str, fd: int) -> None:
        """A claim renamed ``name`` out of the directory ``fd`` (from ``where``): keep it for ``sync``."""
        if fd == self.fd:
            return
        sub = name.partition("/")[0]
        if sub in self.touched:
            os.close(fd)
        else:
            self.touched[sub] = fd

    def sync(self) -> None:
        """fsync incoming/ and each subdirectory claimed from; one is let go only once its fsync
        succeeded, so a failure leaves it and those after it for the retry."""
        fsync_dir(self.fd)
        for sub in sorted(self.touched):
            fsync_dir(self.touched[sub])
            os.close(self.touched.pop(sub))

    def touch_all(self) -> None:
        """At start-up: the next ``sync`` fsyncs every producer subdirectory. A claim the last run made
        from one may never have been synced (killed first); its job, recovered from active/, must not be
        published before the file's leaving that directory is durable, or a power cut brings it back."""
        with os.scandir(self.fd) as entries:
            names = sorted(e.name for e in entries if producer_subdir(e.name) and e.is_dir(follow_symlinks=False))
        for name in names[:self.max_subdirs]:
            if name not in self.touched:
                try:
                    self.touched[name] = self.subdir_fd(name)
                except OSError:
                    continue  # gone, or swapped for something else: nothing of ours left it

    def close_touched(self) -> None:
        for fd in self.touched.values():
            os.close(fd)
        self.touched.clear()


class Spool:
    """The spool and results directories, held open by file descriptor."""

    def __init__(self, spool_dir: Path, results_dir: Path) -> None:
        self.root = spool_dir
        self.results = results_dir
        self.fds: dict[str, int] = {}
        self.run = ""  # this run's folder in results/.parts/ (start_run)
        self._parts = str(results_dir / PARTS)  # parts_dir as text: part_path runs several times a file
        self.abandon = threading.Event()  # set at shutdown: stop copying
        self.acl_unsupported: list[str] = []  # tmp/, incoming/ on a filesystem without ACLs (create)
        self.incoming = Incoming()

    # -- setting up -------------------------------------------------------

    def create(self, producer_gid: int | None = None, subdirs: tuple[str, ...] = ()) -> None:
        """Create missing directories with the permissions of the protocol.

        incoming/ and tmp/ are group-writable (and setgid) for producers when
        a producer group is given, and so are the producer subdirectories of
        incoming/ named in ``subdirs``; everything else is the daemon's alone.
        """
        try:
            self._create(producer_gid)
            self.create_subdirs(subdirs, producer_gid)
        except OSError as exc:
            where = exc.filename or self.root
            raise SpoolError(f"{where}: cannot create the directory: {exc.strerror}") from None

    def create_subdirs(self, subdirs: tuple[str, ...], producer_gid: int | None) -> None:
        """incoming/SUB for each name, with incoming/'s mode, group and default ACL (spool.subdirs)."""
        for sub in subdirs:
            make_subdir(self.root / "incoming" / sub, producer_gid, self.acl_unsupported)

    def _create(self, producer_gid: int | None) -> None:
        # A symlink in place of one of our directories would redirect every
        # write through it, so it is refused before anything is created (the
        # last path component only: links higher up are the administrator's).
        for path in (self.root, *(self.root / sub for sub in SUBDIRS), self.results, self.results / PARTS):
            if path.is_symlink():
                raise SpoolError(f"{path}: is a symbolic link; refusing to follow it")
        self.root.mkdir(parents=True, exist_ok=True)
        for sub in SUBDIRS:
            path = self.root / sub
            path.mkdir(mode=0o750, exist_ok=True)
            if sub in ("tmp", "incoming") and producer_gid is not None:
                open_to_producers(path, producer_gid, self.acl_unsupported)
        self.results.mkdir(parents=True, exist_ok=True, mode=0o750)
        (self.results / PARTS).mkdir(exist_ok=True, mode=0o700)

    def open(self, max_subdirs: int = 0) -> None:
        """Open the directories; read up to ``max_subdirs`` producer subdirectories (spool.max_subdirs),
        each of which the first sync of claims fsyncs (``Incoming.touch_all``)."""
        for sub in SUBDIRS:
            self.fds[sub] = _open_dir(self.root / sub)
        self.fds["results"] = _open_dir(self.results)
        self.incoming.fd = self.fds["incoming"]
        self.incoming.max_subdirs = max_subdirs
        self.incoming.touch_all()
        self.fds["parts"] = self.fds["all_parts"] = _open_dir(self.results / PARTS)

    def close(self) -> None:
        for fd in set(self.fds.values()):
            os.close(fd)
        self.fds.clear()
        self.incoming.close_touched()
        self.incoming.fd = -1
        self.run = ""
        self._parts = str(self.results / PARTS)

    def start_run(self) -> None:
        """Give this run of the daemon a parts folder of its own, results/.parts/RUN/.

        Called after recovery emptied results/.parts/. A worker orphaned by an
        earlier run (its supervisor killed) that finishes a chunk late finds
        its run's folder gone and cannot leave a part behind; part names of
        two runs never meet, whatever pids the kernel reuses.
        """
        run = f"run.{os.getpid()}.{time.time_ns()}"
        os.mkdir(run, mode=0o700, dir_fd=self.fds["all_parts"])
        self.fds["parts"] = _open_dir(self.results / PARTS / run)
        self.run = run
        self._parts = str(self.results / PARTS / run)

    def end_run(self) -> None:
        """At a stop: remove this run's parts folder; what is left in it belongs to unfinished files,
        which the next start processes again from their inputs in active/."""
        if not self.run:
            return
        try:
            for entry in os.listdir(self.fds["parts"]):
                os.unlink(entry, dir_fd=self.fds["parts"])
            os.rmdir(self.run, dir_fd=self.fds["all_parts"])
        except OSError:
            pass  # recovery at the next start removes it

    @property
    def parts_dir(self) -> Path:
        """Where this run's part files go (results/.parts/RUN once ``start_run`` ran)."""
        return Path(self._parts)

    # -- naming -----------------------------------------------------------

    def _taken(self, job_name: str) -> bool:
        return any(entry_exists(entry, self.fds[where]) for where, entry in job_entries(job_name))

    def unique_job_name(self, name: str) -> str:
        """``name`` (``job_stem``), or ``name.N`` for the smallest N whose every entry is free (``job_entries``)."""
        for candidate in job_name_candidates(job_stem(name)):
            if not self._taken(candidate):
                return candidate
        raise SpoolError(f"no free job name for {name!r}")

    # -- the steps --------------------------------------------------------

    def scan_incoming(self) -> Iterator[tuple[str, float]]:
        """Names waiting in incoming/ with their mtimes, dotfiles skipped (``Incoming.scan``)."""
        return self.incoming.scan(self.root / "incoming")

    def mtime_in_incoming(self, name: str) -> float:
        return self.incoming.mtime(name)

    def claim(self, name: str) -> str | None:
        """Rename incoming/NAME (or incoming/SUB/NAME) into active/; None when it is already gone."""
        job_name = self.unique_job_name(name)
        try:
            fd, entry = self.incoming.where(name)
        except FileNotFoundError:
            return None  # the subdirectory went with it
        try:
            os.rename(entry, job_name, src_dir_fd=fd, dst_dir_fd=self.fds["active"])
        except FileNotFoundError:
            self.incoming.done_with(fd)
            return None
        except BaseException:
            self.incoming.done_with(fd)
            raise
        self.incoming.claimed_from(name, fd)
        return job_name

    def sync_claims(self) -> None:
        """Make a batch of claims durable (one fsync per directory: incoming/, the subdirectories
        claimed from, active/)."""
        self.incoming.sync()
        fsync_dir(self.fds["active"])

    def inspect(self, name: str, job_name: str, max_bytes: int,
                owner_ok: Callable[[int], bool] | None = None) -> Claimed:
        """Open a claimed file safely and check it may be read (and, with ``owner_ok``, who owns it)."""
        try:
            fd = os.open(job_name, _FILE_FLAGS, dir_fd=self.fds["active"])
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise InputRejected("not_regular_file", "is a symbolic link; not followed") from None
            if exc.errno in (errno.EACCES, errno.EPERM):
                raise InputRejected("unreadable", "permission denied for the service user") from None
            if exc.errno == errno.ENXIO:
                raise InputRejected("not_regular_file", "is a socket or device") from None
            if exc.errno == errno.EWOULDBLOCK:
                # O_NONBLOCK open of a file another process holds a write
                # lease on (fcntl F_SETLEASE): without O_NONBLOCK the open
                # would wait for the lease break, up to
                # /proc/sys/fs/lease-break-time (fcntl(2), "Leases"). The
                # holder still has the file open for writing, like a
                # producer that writes after its claim: failed/, unread.
                raise InputRejected("leased", LEASED) from None
            raise InputRejected("unreadable", f"cannot open: {exc.strerror}") from None
        try:
            st = os.fstat(fd)
        finally:
            os.close(fd)
        kind = stat.S_IFMT(st.st_mode)
        if owner_ok is not None and not owner_ok(st.st_uid):
            raise InputRejected("foreign_owner", f"owned by uid {st.st_uid}, who is neither in the producer "
                                                 f"group nor the service user (spool.check_owner)")
        if kind != stat.S_IFREG:
            raise InputRejected("not_regular_file", f"is {_NOT_REGULAR.get(kind, 'not a regular file')}")
        if st.st_nlink > 1:
            # Another name for the same inode may be outside the spool, and a
            # producer could keep writing through it: refuse to read it.
            raise InputRejected("hard_link", f"has {st.st_nlink} links; only single-link files are read")
        if st.st_size > max_bytes:
            raise InputRejected("too_large", f"{st.st_size} bytes, limit spool.max_file_bytes={max_bytes}")
        return Claimed(
            name, job_name, str(self.root / "active" / job_name), st.st_size, st.st_dev, st.st_ino,
            time.time(), st.st_mtime, st.st_ctime_ns,
        )

    def part_path(self, token: str) -> str:
        return f"{self._parts}/{token}"

    def assemble(self, parts: list[str], token: str) -> str:
        """Concatenate part files, in order, into one fsync'd part file."""
        out_path = self.part_path(token)
        try:
            self.append_parts(out_path, parts, 0, sync=True)
        except OSError:
            self.remove_part(out_path)  # half a result must not block the retry
            raise
        return out_path

    def append_parts(self, out_path: str, parts: list[str], offset: int, sync: bool) -> int:
        """Append ``parts`` to the assembly at ``offset`` (cutting any tail a
        failed attempt left there); fsync if ``sync``; return the new size.

        The copied parts are removed: a large file then needs room for its
        result about once, not twice.
        """
        out = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o640)
        try:
            os.ftruncate(out, offset)
            os.lseek(out, offset, os.SEEK_SET)
            for part in parts:
                src = os.open(part, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
                try:
                    remaining = os.fstat(src).st_size
                    while remaining > 0:
                        if self.abandon.is_set():
                            raise InterruptedError("the daemon is stopping")
                        # In-kernel copy, in pieces so a stop is not held up.
                        copied = os.copy_file_range(src, out, min(remaining, _COPY_PIECE))
                        if copied == 0:
                            break
                        remaining -= copied
                finally:
                    os.close(src)
            if sync:
                os.fsync(out)
            size = os.lseek(out, 0, os.SEEK_CUR)
        finally:
            os.close(out)
        for part in parts:
            try:
                self.remove_part(part)
            except (OSError, KeyError):
                pass  # copied already; a stale part is cleaned at the next start
        return size

    def write_parts(self, parts: Sequence[tuple[str, bytes]]) -> None:
        """Small part files (summaries), ``(token, data)`` each, written whole and fsync'd; one left by
        an earlier try is replaced. On an error none of them is left, and it is raised.

        A group's files are all written before the first is fsync'd: one fsync
        after another then waits less than when each file's write waits for
        its own (on ext4 about 0.2 ms a file instead of 0.35).
        """
        try:
            for at in range(0, len(parts), _SYNC_GROUP):
                self._write_group(parts[at:at + _SYNC_GROUP])
        except OSError:
            for token, _ in parts:
                self.remove_part(token)
            raise

    def _write_group(self, parts: Sequence[tuple[str, bytes]]) -> None:
        fds: list[int] = []
        try:
            for token, data in parts:
                try:
                    os.unlink(token, dir_fd=self.fds["parts"])
                except FileNotFoundError:
                    pass
                fds.append(os.open(token, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                                   0o640, dir_fd=self.fds["parts"]))
                write_all(fds[-1], data)
            for fd in fds:
                os.fsync(fd)
        finally:
            for fd in fds:
                os.close(fd)

    def publish_result(self, part: str, job_name: str, summary: str | None = None,
                       suffix: str = RESULT_SUFFIX) -> str:
        """Link the summary in as results/JOB.summary.json, then the part as results/JOB.jsonl (or
        ``suffix``); never overwrites. The summary goes first: one seen alone is a commit cut short
        (recovery removes it)."""
        result = job_name + suffix
        if summary is not None:
            os.link(os.path.basename(summary), job_name + SUMMARY_SUFFIX,
                    src_dir_fd=self.fds["parts"], dst_dir_fd=self.fds["results"], follow_symlinks=False)
        try:
            os.link(
                os.path.basename(part), result,
                src_dir_fd=self.fds["parts"], dst_dir_fd=self.fds["results"], follow_symlinks=False,
            )
        except OSError:
            if summary is not None:
                self._unlink_result_entry(job_name + SUMMARY_SUFFIX)
            raise
        return str(self.results / result)

    def unpublish(self, job_name: str, suffix: str = RESULT_SUFFIX) -> None:
        """Take back the links of a result whose directory fsync failed (the parts keep the data):
        the result first, so a summary is never left standing for a result that is gone."""
        self._unlink_result_entry(job_name + suffix)
        self._unlink_result_entry(job_name + SUMMARY_SUFFIX)

    def _unlink_result_entry(self, entry: str) -> None:
        try:
            os.unlink(entry, dir_fd=self.fds["results"])
        except FileNotFoundError:
            pass

    def sync_results(self) -> None:
        fsync_dir(self.fds["results"])

    def retire_input(self, job_name: str, keep: bool) -> None:
        """Step 3: move the input to done/ or delete it.

        Raises OSError (ENOSPC: done/ needs a new block on a full disk); the
        input then stays in active/ beside its published result, and
        recovery at the next start retires it.
        """
        if keep:
            rename_noreplace_at(job_name, job_name, self.fds["active"], self.fds["done"])
        else:
            os.unlink(job_name, dir_fd=self.fds["active"])

    def sync_retired(self, keep: bool) -> None:
        # The destination first: the input is never durably gone from active/
        # while not yet durably in done/.
        if keep:
            fsync_dir(self.fds["done"])
        fsync_dir(self.fds["active"])

    def changed(self, claimed: Claimed) -> str | None:
        """Why the claimed input is no longer what was read, or None if it is."""
        try:
            st = os.stat(claimed.job_name, dir_fd=self.fds["active"], follow_symlinks=False)
        except FileNotFoundError:
            return "the claimed file disappeared from active/"
        if (st.st_dev, st.st_ino) != (claimed.dev, claimed.ino):
            return "the file in active/ is not the one that was claimed"
        if (st.st_size, st.st_mtime, st.st_ctime_ns) != (claimed.size, claimed.mtime, claimed.ctime_ns):
            # The ctime too: a producer can restore the size and the mtime
            # (utime) after rewriting, but every write moves the ctime.
            return (f"written to while it was processed ({claimed.size} -> {st.st_size} bytes); "
                    "producers must write in tmp/ and rename into incoming/")
        return None

    def remove_part(self, part: str) -> None:
        try:
            os.unlink(os.path.basename(part), dir_fd=self.fds["parts"])
        except FileNotFoundError:
            pass

    def fail(self, job_name: str, reason: str, detail: str, extra: dict[str, Any] | None = None) -> str:
        """Move active/JOB to failed/JOB beside JOB.error.json (written first).

        The claim is made durable first (incoming/ and active/): a power cut
        must not bring the input back to incoming/ beside its error record.
        """
        info = {"job": printable(job_name), "reason": reason, "detail": detail, "time": time.time(),
                **{k: printable(v) if isinstance(v, str) else v for k, v in (extra or {}).items()}}
        self.sync_claims()
        failed_fd = self.fds["failed"]
        error_name = job_name + ERROR_SUFFIX
        tmp_name = f".{job_name[:200]}.{os.getpid()}.tmp"
        try:
            os.unlink(tmp_name, dir_fd=failed_fd)  # left by an earlier attempt: ours, never followed
        except FileNotFoundError:
            pass
        fd = os.open(tmp_name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o640,
                     dir_fd=failed_fd)
        try:
            write_all(fd, orjson.dumps(info, option=orjson.OPT_INDENT_2) + b"\n")
            os.fsync(fd)
        except OSError:
            os.close(fd)
            os.unlink(tmp_name, dir_fd=failed_fd)
            raise
        os.close(fd)
        # The error file is ours to replace: a failure retried after a crash
        # rewrites the reason rather than leaving a stale one.
        os.rename(tmp_name, error_name, src_dir_fd=failed_fd, dst_dir_fd=failed_fd)
        fsync_dir(failed_fd)  # the reason is durable before the input moves (recovery relies on it)
        try:
            rename_noreplace_at(job_name, job_name, self.fds["active"], failed_fd)
        except FileNotFoundError:
            pass  # recovery of an already-moved failure
        fsync_dir(failed_fd)
        fsync_dir(self.fds["active"])
        return str(self.root / "failed" / error_name)
