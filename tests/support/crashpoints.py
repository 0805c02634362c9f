"""Crash-point and error-injection exploration of the real daemon (ALICE, SQLite crash tests).

Three pieces, shared by tests/test_crashpoints.py and bench/soak.py:

- ``audit_spool``: the one audit every crash and error test ends with. Each
  input has exactly one result, byte-identical to an uninterrupted run of the
  same input and configuration, or exactly one failed/ entry with its
  NAME.error.json; nothing is left in active/, incoming/, tmp/ or
  results/.parts/, no temporary file in failed/, no duplicate.
- ``order_audit``: the durability order, checked on strace traces (of the run
  that was cut and of the restart that recovered): a claim, a part, a result
  link and a failure record are each made durable by a *successful* fsync
  before anything depends on them, and an fsync that failed is never the
  ground an input is retired on (PostgreSQL's "fsyncgate").
- ``Explorer``: records the mutating system calls of one process of the
  daemon (the supervisor, traced from its start with ``strace -f -b execve``
  so the forkserver and its children are not; or a worker, attached by pid
  once it is up), then for every call N of that trace runs the scenario again
  from a fresh copy of the starting spool and kills the process with SIGKILL
  at exactly that call (or makes that call fail with an errno), restarts the
  daemon as systemd would, lets it finish, stops it and audits. A point that
  fails the audit is started once more and audited again, which tells what
  the next start clears (and proves that it does) from what stays.

How a call is hit exactly. ``strace --inject=SYSCALL:signal=KILL:when=K``
counts invocations per syscall and per thread, and only those that match the
``-P`` paths given (fd arguments by the path they resolve to, path arguments
by their raw string; see strace's pathtrace.c, mirrored by ``match_keys``).
The recording traces every call of the syscall names that are injected, so
for any path set the ordinal K of the wanted call in its thread can be
computed from it. Each target gets the widest path set (all of the spool's
directories and files, so the cut run's own trace shows every spool
operation) under which K is unambiguous (no other thread reaches K first);
calls outside the spool (interpreter start-up) count every call. SIGKILL at
syscall entry stops the call before it runs: the kill at N leaves exactly
the effects of calls 1..N-1. Every run then proves its own exactness: the
call its trace shows as cut (``= ?`` before ``killed by SIGKILL``, or
``(INJECTED)``) must be the target, normalized for pids and run directory;
otherwise the point is reported as inexact, never silently counted. A run
whose trace shows no thread making K calls of the kind had a different
schedule (an append takes in as many parts as are finished): it is run again
(``Explorer.explore``), and reported "not reached" if no try gets there.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ipspool.spool import producer_subdir
from tests.support.daemon import write_toml

REPO = Path(__file__).resolve().parents[2]

MUTATING = ("rename", "renameat", "renameat2", "link", "linkat", "unlink", "unlinkat", "open", "openat",
            "creat", "write", "pwrite64", "fsync", "fdatasync", "ftruncate", "copy_file_range",
            "mkdir", "mkdirat")
ERRNOS: dict[str, tuple[str, ...]] = {
    "fsync": ("EIO", "ENOSPC", "EDQUOT"), "fdatasync": ("EIO", "ENOSPC", "EDQUOT"),
    "write": ("EIO", "ENOSPC", "EDQUOT"), "pwrite64": ("EIO", "ENOSPC", "EDQUOT"),
    "rename": ("EIO", "ENOSPC", "EDQUOT"), "renameat": ("EIO", "ENOSPC", "EDQUOT"),
    "renameat2": ("EIO", "ENOSPC", "EDQUOT"),
    "link": ("EIO", "ENOSPC", "EDQUOT"), "linkat": ("EIO", "ENOSPC", "EDQUOT"),
    "unlink": ("EIO",), "unlinkat": ("EIO",),
    # the other mutating calls, where the errno can happen
    "open": ("EIO", "ENOSPC", "EDQUOT"), "openat": ("EIO", "ENOSPC", "EDQUOT"), "creat": ("EIO", "ENOSPC", "EDQUOT"),
    "copy_file_range": ("EIO", "ENOSPC", "EDQUOT"), "ftruncate": ("EIO",),
    "mkdir": ("EIO",), "mkdirat": ("EIO",),
}
_O_WRITE = ("O_CREAT", "O_WRONLY", "O_RDWR", "O_TRUNC", "O_APPEND")


# ============================================================================
# the audit
# ============================================================================


@dataclass(frozen=True)
class Expected:
    """What an uninterrupted run made of one input: its result bytes, or its failure reason."""

    result: bytes | None = None
    reason: str | None = None
    input: bytes | None = None   # the input's bytes, to check what reaches done/ is untouched
    summary: bytes | None = None  # RESULTS/NAME.summary.json beside the result


@dataclass
class AuditReport:
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)       # allowed, but not what the reference did
    outcomes: dict[str, str] = field(default_factory=dict)  # name -> "result" | "failed:REASON"

    @property
    def ok(self) -> bool:
        return not self.problems


def _entries(directory: Path) -> list[str]:
    try:
        return sorted(os.listdir(directory))
    except FileNotFoundError:
        return []


def _left_in_incoming(incoming: Path, entry: str) -> list[str]:
    """What an entry of incoming/ leaves there: a producer subdirectory stays, its contents do not."""
    path = incoming / entry
    if path.is_dir() and not path.is_symlink() and producer_subdir(entry):
        return [f"{entry}/{x}" for x in _entries(path)]
    return [entry]


def audit_spool(  # noqa: PLR0912 - one branch per promise, in the order docs/durability.md states them
    spool: Path, results: Path, expected: Mapping[str, Expected], keep_processed: bool = True,
    producer_tmp: Callable[[str], bool] | None = None,
) -> AuditReport:
    """The promise for every input, against the results of an uninterrupted run.

    ``producer_tmp`` says which names in tmp/ are a producer's (allowed);
    by default tmp/ must be empty (the daemon never writes there).
    """
    report = AuditReport()
    problem = report.problems.append
    failed_dir, done_dir = spool / "failed", spool / "done"
    for name, want in expected.items():
        result = results / f"{name}.jsonl"
        error = failed_dir / f"{name}.error.json"
        has_result, has_error = os.path.lexists(result), os.path.lexists(error)
        if has_result and has_error:
            problem(f"{name}: both a result and a failure record")
        elif not has_result and not has_error:
            problem(f"{name}: neither a result nor a failure record")
        elif has_result:
            report.outcomes[name] = "result"
            if result.is_symlink() or not result.is_file():
                problem(f"{name}: the result is not a regular file")
                continue
            data = result.read_bytes()
            if want.result is None:
                problem(f"{name}: has a result; the uninterrupted run failed it ({want.reason})")
            elif data != want.result:
                problem(f"{name}: result differs from the uninterrupted run "
                        f"({len(data)} bytes, reference {len(want.result)}; {_first_difference(data, want.result)})")
            kept = done_dir / name
            if keep_processed and not os.path.lexists(kept):
                problem(f"{name}: result, but the input is not in done/")
            if not keep_processed and os.path.lexists(kept):
                problem(f"{name}: keep_processed is false, yet the input is in done/")
            if os.path.lexists(failed_dir / name):
                problem(f"{name}: result, and the input in failed/")
            if want.input is not None and kept.is_file() and kept.read_bytes() != want.input:
                problem(f"{name}: the input in done/ is not the input submitted")
            summary = results / f"{name}.summary.json"
            if not summary.is_file():
                problem(f"{name}: a result without its summary")
            elif want.summary is not None and summary.read_bytes() != want.summary:
                problem(f"{name}: summary differs from the uninterrupted run")
        else:
            try:
                reason = str(json.loads(error.read_bytes())["reason"])
            except (ValueError, KeyError, TypeError, OSError) as exc:
                problem(f"{name}: unreadable failure record: {exc}")
                continue
            report.outcomes[name] = f"failed:{reason}"
            if not os.path.lexists(failed_dir / name):
                problem(f"{name}: failure record without its input in failed/")
            if os.path.lexists(done_dir / name):
                problem(f"{name}: failed, yet the input is in done/")
            if want.reason is None:
                report.notes.append(f"{name}: failed ({reason}) where the uninterrupted run produced a result")
            elif reason != want.reason:
                report.notes.append(f"{name}: failed with {reason}, the uninterrupted run with {want.reason}")
    # nothing else anywhere: no duplicate, no half-done work, no temporary file
    want_results = {f"{n}{suffix}" for n in report.outcomes if report.outcomes[n] == "result"
                    for suffix in (".jsonl", ".summary.json")}
    extra = [e for e in _entries(results) if e != ".parts" and e not in want_results]
    if extra:
        problem(f"results/ holds what belongs to no input (duplicates?): {extra[:8]}")
    want_failed = {x for n, o in report.outcomes.items() if o.startswith("failed:") for x in (n, f"{n}.error.json")}
    extra = [e for e in _entries(failed_dir) if e not in want_failed]
    if extra:
        problem(f"failed/ holds unexpected entries (temporary files, duplicates): {extra[:8]}")
    want_done = {n for n, o in report.outcomes.items() if o == "result"} if keep_processed else set()
    extra = [e for e in _entries(done_dir) if e not in want_done]
    if extra:
        problem(f"done/ holds unexpected entries (duplicates?): {extra[:8]}")
    for sub in ("active", "incoming"):
        left = _entries(spool / sub)
        if sub == "incoming":
            left = [x for entry in left for x in _left_in_incoming(spool / sub, entry)]
        if left:
            problem(f"left in {sub}/: {left[:8]}")
    # An empty run folder is told apart from part files: Spool.end_run leaves one behind when
    # removing it fails at a stop (the next start's recovery removes it).
    parts = results / ".parts"
    empty: list[str] = []
    stray: list[str] = []
    for entry in _entries(parts):
        if not (parts / entry).is_dir() or (parts / entry).is_symlink():
            stray.append(entry)
        elif inside := _entries(parts / entry):
            stray += [f"{entry}/{x}" for x in inside]
        else:
            empty.append(entry)
    if empty:
        problem(f"empty run folder left in results/.parts/: {empty[:8]}")
    if stray:
        problem(f"part files left in results/.parts/: {stray[:8]}")
    tmp = [e for e in _entries(spool / "tmp") if not (producer_tmp and producer_tmp(e))]
    if tmp:
        problem(f"temporary files left in tmp/: {tmp[:8]}")
    return report


def _first_difference(a: bytes, b: bytes) -> str:
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            line = a[:i].count(b"\n") + 1
            return f"first difference at byte {i}, result line {line}"
    return f"one is a prefix of the other at byte {min(len(a), len(b))}"


def read_expected(spool: Path, results: Path, inputs: Mapping[str, bytes | None]) -> dict[str, Expected]:
    """The outcome of a finished, uninterrupted run: the reference for the audit."""
    out: dict[str, Expected] = {}
    for name, data in inputs.items():
        result = results / f"{name}.jsonl"
        error = spool / "failed" / f"{name}.error.json"
        if result.is_file():
            summary = results / f"{name}.summary.json"
            out[name] = Expected(result=result.read_bytes(), input=data,
                                 summary=summary.read_bytes() if summary.is_file() else None)
        elif error.is_file():
            out[name] = Expected(reason=str(json.loads(error.read_bytes())["reason"]), input=data)
        else:
            raise AssertionError(f"reference run: {name} has no outcome")
    return out


# ============================================================================
# strace traces
# ============================================================================


@dataclass
class Call:
    tid: int
    ts: float
    name: str
    args: list[tuple[str, Any]]   # ("fd", (num, path)) | ("str", text) | ("raw", text)
    ret: str                      # "0", "3", "-1", "?"
    errno: str = ""
    injected: bool = False
    text: str = ""
    seq: int = 0                  # position in the trace file, by entry

    def fd_path(self, index: int) -> str | None:
        if index >= len(self.args):
            return None
        kind, value = self.args[index]
        if kind != "fd":
            return None
        num, path = value
        return path if num >= 0 else None  # AT_FDCWD never matches (fd < 0)

    def string(self, index: int) -> str | None:
        if index >= len(self.args):
            return None
        kind, value = self.args[index]
        return value if kind == "str" else None

    @property
    def ok(self) -> bool:
        return self.ret not in ("?", "") and not self.ret.startswith("-")

    @property
    def flags(self) -> str:
        for kind, value in self.args:
            if kind == "raw" and "O_" in value:
                return str(value)
        return ""


_LINE = re.compile(r"^(\d+)\s+(\d+\.\d+)\s+(.*)$")
_RESUMED = re.compile(r"^<\.\.\. (\w+) resumed>(.*)$")
_START = re.compile(r"^(\w+)\((.*)$")
_RESULT = re.compile(r"\)\s+= (\?|-?\d+|0x[0-9a-f]+)(?:<[^>]*>(?:\(deleted\))?)?(?: (E[A-Z0-9]+) \([^)]*\))?(.*)$")


def _unescape(s: str) -> str:
    out = []
    i = 0
    while i < len(s):
        c = s[i]
        if c == "\\" and i + 1 < len(s):
            n = s[i + 1]
            simple = {"n": "\n", "t": "\t", "r": "\r", "v": "\v", "f": "\f", '"': '"', "\\": "\\"}
            if n in simple:
                out.append(simple[n])
                i += 2
                continue
            if n == "x":
                out.append(chr(int(s[i + 2:i + 4], 16)))
                i += 4
                continue
            m = re.match(r"[0-7]{1,3}", s[i + 1:])
            if m:
                out.append(chr(int(m.group(0), 8)))
                i += 1 + len(m.group(0))
                continue
        out.append(c)
        i += 1
    return "".join(out)


def _split_args(body: str) -> tuple[list[tuple[str, Any]], str]:
    """Arguments of a call and the text after its closing parenthesis."""
    args: list[tuple[str, Any]] = []
    i, depth, cur = 0, 0, ""
    while i < len(body):
        c = body[i]
        if c == '"':
            j = i + 1
            while j < len(body) and body[j] != '"':
                j += 2 if body[j] == "\\" else 1
            cur += body[i:j + 1]
            i = j + 1
            continue
        if c == "<" and depth == 0:  # an fd's path: may hold ( ) , characters
            j = body.find(">", i)
            j = len(body) - 1 if j < 0 else j
            cur += body[i:j + 1]
            i = j + 1
            continue
        if c in "({[":
            depth += 1
        elif c in ")}]":
            if depth == 0:
                if cur.strip():
                    args.append(_arg(cur.strip()))
                return args, body[i:]
            depth -= 1
        elif c == "," and depth == 0:
            args.append(_arg(cur.strip()))
            cur = ""
            i += 1
            continue
        cur += c
        i += 1
    if cur.strip():
        args.append(_arg(cur.strip()))
    return args, ""


_FD = re.compile(r"^(-?\d+|AT_FDCWD)<(.*)>(?:\(deleted\))?$", re.S)


def _arg(text: str) -> tuple[str, Any]:
    if text.startswith('"'):
        end = text.rfind('"')
        return ("str", _unescape(text[1:end]))
    m = _FD.match(text)
    if m:
        num = -100 if m.group(1) == "AT_FDCWD" else int(m.group(1))
        return ("fd", (num, m.group(2)))
    return ("raw", text)


def parse_trace(  # noqa: PLR0912 - strace's line forms, one branch each
    path: Path, names: Iterable[str] = MUTATING,
) -> tuple[list[Call], dict[int, str]]:
    """The calls of an ``strace -f -ttt -y`` file (merged across <unfinished ...>), and how each tid ended."""
    wanted = set(names)
    pending: dict[int, tuple[float, str, str, int]] = {}
    calls: list[Call] = []
    ends: dict[int, str] = {}
    seq = 0
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return [], {}
    for line in text.splitlines():
        m = _LINE.match(line)
        if not m:
            continue
        tid, ts, rest = int(m.group(1)), float(m.group(2)), m.group(3)
        if rest.startswith("+++"):
            ends[tid] = rest.strip("+ ")
            continue
        if rest.startswith("---"):
            continue
        r = _RESUMED.match(rest)
        if r:
            if tid not in pending:
                continue
            ts0, name, head, s = pending.pop(tid)
            body = head + r.group(2)
        else:
            sm = _START.match(rest)
            if not sm:
                continue
            name, body = sm.group(1), sm.group(2)
            seq += 1
            s = seq
            ts0 = ts
            if body.endswith("<unfinished ...>"):
                pending[tid] = (ts0, name, body[: -len("<unfinished ...>")].rstrip(), s)
                continue
        if name not in wanted:
            continue
        args, tail = _split_args(body)
        res = _RESULT.match(tail)
        ret, err, extra = (res.group(1), res.group(2) or "", res.group(3)) if res else ("?", "", "")
        calls.append(Call(tid, ts0, name, args, ret, err, "(INJECTED)" in extra, f"{name}({body}", s))
    # a thread killed inside a call: its entry line is all there is
    for tid, (ts0, name, head, s) in pending.items():
        if name in wanted:
            args, _ = _split_args(head + ")")
            calls.append(Call(tid, ts0, name, args, "?", "", False, f"{name}({head}", s))
    calls.sort(key=lambda c: c.seq)
    return calls, ends


def match_keys(call: Call) -> set[str]:
    """What strace's -P compares for this call (src/pathtrace.c): fd paths and raw path strings."""
    n = call.name
    fds: list[int] = []
    strs: list[int] = []
    if n in ("openat", "mkdirat", "unlinkat"):
        fds, strs = [0], [1]
    elif n in ("linkat", "renameat", "renameat2"):
        fds, strs = [0, 2], [1, 3]
    elif n == "link":
        strs = [0, 1]
    elif n in ("rename", "unlink", "mkdir", "open", "creat"):
        strs = [0]
    elif n in ("write", "pwrite64", "fsync", "fdatasync", "ftruncate"):
        fds = [0]
    elif n == "copy_file_range":
        fds = [0, 2]
    keys = {p for i in fds if (p := call.fd_path(i))}
    keys |= {s for i in strs if (s := call.string(i)) is not None}
    return keys


def is_mutating(call: Call) -> bool:
    n = call.name
    if n in ("open", "openat"):
        return any(f in call.flags for f in _O_WRITE)
    if n in ("write", "pwrite64"):
        path = call.fd_path(0) or ""
        return path.startswith("/") and not path.startswith(("/dev/null", "/dev/pts", "/dev/tty"))
    return n in MUTATING


class Normalizer:
    """Makes calls of different runs comparable: run directory, pids and random names replaced."""

    def __init__(self, root: Path, pids: Mapping[int, str]) -> None:
        self.root = str(root)
        self.pids = pids

    def __call__(self, text: str) -> str:
        text = text.replace(self.root, "{ROOT}")
        text = re.sub(r"\b(\d+)(\.\d+\.\d+\.part)\b", lambda m: self.pids.get(int(m.group(1)), "{PID}") + m.group(2),
                      text)
        text = re.sub(r"(\.[^/\"]*)\.(\d+)\.tmp\b", lambda m: m.group(1) + "." + self.pids.get(int(m.group(2)),
                                                                                                  "{PID}") + ".tmp",
                      text)
        text = re.sub(r"/(tmp|systmp)/[a-z0-9_]{8}\b", r"/\1/{RND}", text)
        text = re.sub(r"pymp-[a-z0-9_]{8}", "pymp-{RND}", text)
        text = re.sub(r"pym-\d+-[a-z0-9_]{8}", "pym-{RND}", text)
        text = re.sub(r"listener-[a-z0-9_]{8}", "listener-{RND}", text)
        text = re.sub(r"\brun\.\d+\.\d+\b", "run.{RND}", text)  # each run's parts folder
        return text

    def keys(self, call: Call) -> frozenset[str]:
        return frozenset(self(k) for k in match_keys(call))

    def signature(self, call: Call) -> str:
        """The call without its fd numbers, buffer contents or result."""
        parts = []
        for kind, value in call.args:
            if kind == "fd":
                parts.append("<" + self(value[1]) + ">")
            elif kind == "str":
                if call.name not in ("write", "pwrite64"):
                    parts.append(repr(self(value)))
                else:  # a log line is known by its event; other data by nothing
                    event = re.search(r'"event":"([^"]+)"', value)
                    parts.append(f"event={event.group(1)}" if event else "BUF")
            else:
                parts.append(re.sub(r"^\d+$", "N", self(value)))
        return f"{call.name}(" + ", ".join(parts) + ")"


# ============================================================================
# the durability order
# ============================================================================


def order_audit(  # noqa: PLR0912 - one branch per kind of step
    calls: Sequence[Call], spool: Path, results: Path, keep: bool = True,
) -> list[str]:
    """Durability rules over a time-ordered trace (one or several runs, supervisor and workers).

    Each step that depends on an earlier one needs a *successful* fsync of
    what it depends on, after it and before the step, and no failed fsync of
    the same object in that window: an fsync that failed means the data may
    be gone, whatever later fsyncs say (PostgreSQL's "fsyncgate"). Each
    problem starts with its rule's letter:

    - C claim: incoming/ (or the producer subdirectory X left) and active/
      fsync'd between rename incoming/X -> active/X and the link of results/X.jsonl (else a power cut can bring X
      back to incoming/ beside its result: processed twice);
    - P part: the linked file fsync'd after its last write (when its writes
      are in the trace);
    - R result: results/ fsync'd between the link of X.jsonl and X leaving
      active/ for done/ (or being unlinked); when the link is older than the
      trace (recovery), between the start of the trace and then;
    - F failure: the record fsync'd before its rename to X.error.json, and
      failed/ fsync'd between that rename (or the start of the trace) and
      X's move to failed/;
    - D retire: after X moved to done/, done/ is fsync'd successfully before
      active/ is;
    - S summary: results/X.summary.json is linked before results/X.jsonl (a
      summary alone is a commit cut short, which recovery removes; a result
      alone would be a result without its summary).
    """
    d = {sub: str(spool / sub) for sub in ("incoming", "active", "done", "failed")}
    res = str(results)
    problems: list[str] = []
    fsyncs: list[tuple[int, str, bool]] = [
        (i, c.fd_path(0) or "", c.ok) for i, c in enumerate(calls) if c.name in ("fsync", "fdatasync") and c.ret != "?"
    ]

    def need(rule: str, path: str, lo: int, hi: int, what: str) -> None:
        oks = [ok for i, p, ok in fsyncs if p == path and lo < i < hi]
        if not all(oks):
            problems.append(f"{rule} {what}: an fsync of {path} failed in between, and it went ahead")
        elif not oks:
            problems.append(f"{rule} {what}: no fsync of {path} in between")

    claims: dict[str, int] = {}
    claimed_from: dict[str, str] = {}  # job -> incoming/ or the producer subdirectory it left
    links: dict[str, int] = {}
    summaries: dict[str, int] = {}
    records: dict[str, int] = {}
    written: dict[str, int] = {}   # path -> index of its last data write

    def retired(job: str, i: int, how: str) -> None:
        need("R", res, links.get(job, -1), i, f"{job}: {how} (call {i}) on the strength of results/{job}.jsonl")
        if not keep:
            return
        after = [(j, p, ok) for j, p, ok in fsyncs if j > i and p in (d["done"], d["active"])]
        if after and (after[0][1] != d["done"] or not after[0][2]):
            problems.append(f"D {job}: moved to done/ (call {i}); active/ synced before done/ was synced successfully")

    for i, c in enumerate(calls):
        if not c.ok:
            continue
        n = c.name
        if n in ("renameat", "renameat2"):
            src_dir, src, dst_dir, dst = c.fd_path(0), c.string(1) or "", c.fd_path(2), c.string(3) or ""
            from_incoming = src_dir == d["incoming"] or (src_dir is not None and
                                                         os.path.dirname(src_dir) == d["incoming"])
            if from_incoming and dst_dir == d["active"]:
                claims[dst] = i  # from incoming/ or from one of its producer subdirectories
                claimed_from[dst] = src_dir
            elif src_dir == d["active"] and dst_dir == d["done"]:
                retired(src, i, "moved to done/")
            elif src_dir == d["active"] and dst_dir == d["failed"]:
                need("F", d["failed"], records.get(src, -1), i, f"{src}: moved to failed/ (call {i}) beside its record")
            elif src_dir == dst_dir == d["failed"] and dst.endswith(".error.json"):
                job = dst[: -len(".error.json")]
                records[job] = i
                tmp = f"{d['failed']}/{src}"
                if tmp in written:
                    need("F", tmp, written[tmp], i, f"{job}: failure record renamed in (call {i})")
        elif n == "unlinkat" and c.fd_path(0) == d["active"] and not keep:
            retired(c.string(1) or "", i, "unlinked from active/")
        elif n == "linkat" and c.fd_path(2) == res:
            result = c.string(3) or ""
            if result.endswith(".summary.json"):
                summaries[result[: -len(".summary.json")]] = i
                continue
            job = result[: -len(".jsonl")] if result.endswith(".jsonl") else result
            links[job] = i
            if not 0 <= summaries.get(job, -1) < i:
                problems.append(f"S {job}: result linked (call {i}) with no summary linked before it")
            if job in claims:
                for where in (claimed_from[job], d["active"]):
                    need("C", where, claims[job], i, f"{job}: result linked (call {i}) after its claim")
            src = f"{c.fd_path(0)}/{c.string(1)}"
            if src in written:
                need("P", src, written[src], i, f"{job}: result linked (call {i}) from {os.path.basename(src)}")
        elif n in ("write", "pwrite64", "ftruncate", "copy_file_range"):
            # Only data writes open a window: a trace cut to the spool's paths shows a file's
            # creation (through its directory) but not its writes and fsyncs (through its fd).
            path = c.fd_path(2 if n == "copy_file_range" else 0)
            if path:
                written[path] = i
    return problems


def relocate(calls: Iterable[Call], old: Path, new: Path) -> list[Call]:
    """Calls of one run directory, as if they had been made in another."""
    a, b = str(old), str(new)

    def fix(arg: tuple[str, Any]) -> tuple[str, Any]:
        kind, value = arg
        if kind == "fd":
            return kind, (value[0], value[1].replace(a, b))
        if kind == "str":
            return kind, value.replace(a, b)
        return arg

    return [Call(c.tid, c.ts, c.name, [fix(x) for x in c.args], c.ret, c.errno, c.injected, c.text, c.seq)
            for c in calls]


# ============================================================================
# scenarios
# ============================================================================


def ip_lines(n: int, seed: int) -> bytes:
    import random

    rng = random.Random(seed)
    out = []
    for i in range(n):
        if i % 37 == 5:
            out.append(f"bad-{i}")
        elif i % 4 == 0:
            out.append(f"2001:db8::{rng.getrandbits(16):x}")
        else:
            out.append(".".join(str(rng.randrange(1, 224)) for _ in range(4)))
    return ("\n".join(out) + "\n").encode()


@dataclass
class Scenario:
    """A starting spool and the inputs whose whole life is explored."""

    name: str
    inputs: dict[str, bytes]                  # regular files put into incoming/
    settings: dict[str, dict[str, Any]] = field(default_factory=dict)
    specials: dict[str, str] = field(default_factory=dict)   # name -> "symlink" | "fifo" in incoming/
    prepare: Callable[[Path, Path, Mapping[str, Expected]], None] | None = None  # (spool, results, reference)
    preplaced: dict[str, bytes] = field(default_factory=dict)  # inputs that prepare() puts elsewhere
    placed: dict[str, str] = field(default_factory=dict)  # input (job name) -> its path under incoming/
    jobs: int = 4                             # assembly names to watch (seq 1..jobs)

    @property
    def all_inputs(self) -> dict[str, bytes | None]:
        return {**self.inputs, **dict.fromkeys(self.specials), **self.preplaced}


def _peers_csv(n: int, seed: int) -> bytes:
    """A CSV whose address is in column ``peer`` (only the fw/ rule finds it)."""
    rows = ip_lines(n, seed).decode().splitlines()
    return ("when,peer,note\n" + "".join(f"t{i},{ip},\"a, b\"\n" for i, ip in enumerate(rows))).encode()


def _recovery_prepare(spool: Path, results: Path, ref: Mapping[str, Expected]) -> None:
    """A spool as a crash leaves it: interrupted, published-not-retired, failed-not-moved, debris."""
    active = spool / "active"
    for name in ("redo.txt", "published.txt", "halffailed.txt"):
        (active / name).write_bytes(ip_lines({"redo.txt": 30, "published.txt": 25, "halffailed.txt": 5}[name],
                                             {"redo.txt": 11, "published.txt": 12, "halffailed.txt": 13}[name]))
    published = ref["published.txt"]
    assert published.result is not None and published.summary is not None
    # Published means both links made, the summary's first (order rule S).
    (results / "published.txt.summary.json").write_bytes(published.summary)
    (results / "published.txt.jsonl").write_bytes(published.result)
    (spool / "failed" / "halffailed.txt.error.json").write_bytes(
        json.dumps({"job": "halffailed.txt", "reason": "too_large", "detail": "recorded before a crash"}).encode())
    (results / ".parts").mkdir(exist_ok=True, mode=0o700)
    (results / ".parts" / "999.1.0.part").write_bytes(b'{"line":1}\n')
    (spool / "failed" / ".halffailed.txt.999.tmp").write_bytes(b"{")


def scenarios() -> dict[str, Scenario]:
    recovery_inputs = {"redo.txt": ip_lines(30, 11), "published.txt": ip_lines(25, 12),
                       "halffailed.txt": ip_lines(5, 13)}
    return {
        "basic": Scenario("basic", {"one.txt": ip_lines(20, 1)}),
        "failing": Scenario("failing", {"big.txt": ip_lines(600, 2)}, settings={"spool": {"max_file_bytes": 4096}}),
        "rejected": Scenario("rejected", {}, specials={"link": "symlink", "fifo": "fifo"}),
        "multichunk": Scenario("multichunk", {"many.txt": ip_lines(3600, 3)},
                               settings={"workers": {"chunk_bytes": 4096}}),
        "recovery": Scenario("recovery", {}, prepare=_recovery_prepare, preplaced=recovery_inputs),
        # Decompressed into the parts folder, then split into chunks (docs/inputs.md).
        "compressed": Scenario("compressed", {"packed.txt": gzip.compress(ip_lines(3600, 4), mtime=0)},
                               settings={"workers": {"chunk_bytes": 4096}}),
        # Two producer subdirectories (one with a CSV rule) and incoming/ itself: claims from
        # incoming/SUB/ (that directory's fsync) and recovery by the rule the job name gives.
        "subdirs": Scenario(
            "subdirs", {"fw~peers.csv": _peers_csv(40, 6), "hp~one.txt": ip_lines(20, 7), "top.txt": ip_lines(5, 8)},
            settings={"spool": {"subdirs": ["fw", "hp"]},
                      "inputs": [{"subdir": "fw", "match": "*.csv", "format": "delimited", "column": "peer"}]},
            placed={"fw~peers.csv": "fw/peers.csv", "hp~one.txt": "hp/one.txt"}),
    }


# ============================================================================
# running the daemon
# ============================================================================


def strace_available() -> bool:
    strace = shutil.which("strace")
    return bool(strace) and subprocess.run([strace or "strace", "-o", "/dev/null", "true"],
                                           capture_output=True).returncode == 0


def base_settings(root: Path) -> dict[str, dict[str, Any]]:
    return {
        "spool": {"dir": str(root / "spool"), "rescan_interval": 5.0},
        "workers": {"processes": 1, "threads": 2, "heartbeat_timeout": 10.0, "graceful_timeout": 20.0},
        "log": {"level": "info", "format": "json", "file": str(root / "daemon.log")},
    }


class Run:
    """One run directory: a spool, a configuration, a log; daemons started on it one after another."""

    def __init__(self, root: Path, settings: Mapping[str, Mapping[str, Any]], python: str = sys.executable) -> None:
        self.root = root
        self.spool = root / "spool"
        self.results = self.spool / "results"
        self.log_path = root / "daemon.log"
        self.config = root / "ipspool.toml"
        self.tmpdir = root / "systmp"
        self.python = python
        self.settings = settings
        root.mkdir(parents=True, exist_ok=True)
        self.tmpdir.mkdir(exist_ok=True)
        data = base_settings(root)
        for section, body in settings.items():
            data[section] = {**data.get(section, {}), **body} if isinstance(body, Mapping) else body
        write_toml(self.config, data)
        self.keep = bool(data["spool"].get("keep_processed", True))
        self._offset = 0
        self.events: list[dict[str, Any]] = []

    # -- processes ---------------------------------------------------------

    def env(self) -> dict[str, str]:
        path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH", "")]))
        # TMPDIR: multiprocessing's listener directories stay inside the run.
        return {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": path, "TMPDIR": str(self.tmpdir)}

    def popen(self, prefix: Sequence[str] = ()) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [*prefix, self.python, "-m", "ipspool", "run", "--config", str(self.config)],
            stdout=subprocess.DEVNULL, stderr=open(self.root / "stderr.log", "ab"),
            env=self.env(), start_new_session=True, cwd="/",
        )

    def read_events(self) -> list[dict[str, Any]]:
        try:
            with open(self.log_path, "rb") as handle:
                handle.seek(self._offset)
                data = handle.read()
        except FileNotFoundError:
            return self.events
        complete = data.rfind(b"\n") + 1
        self._offset += complete
        for line in data[:complete].splitlines():
            try:
                self.events.append(json.loads(line))
            except ValueError:
                self.events.append({"event": "<torn line>", "raw": line[:200].decode(errors="replace")})
        return self.events

    def ready_pid(self, after: int = 0) -> int | None:
        for e in self.read_events()[after:]:
            if e.get("event") == "daemon.ready":
                return int(e["pid"])
        return None

    def settled(self, names: Iterable[str]) -> bool:
        incoming = self.spool / "incoming"
        if _entries(self.spool / "active") or any(_left_in_incoming(incoming, e) for e in _entries(incoming)):
            return False
        return all(os.path.lexists(self.results / f"{n}.jsonl")
                   or os.path.lexists(self.spool / "failed" / f"{n}.error.json") for n in names)


def session_pids(sid: int) -> list[int]:
    """Live processes of a session (zombies left to init do not count)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.getsid(int(entry)) != sid:
                    continue
                state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except (OSError, IndexError):
                continue
            if state not in ("Z", "X"):
                pids.append(int(entry))
    return pids


def reap_session(proc: subprocess.Popen[bytes], grace: float = 3.0) -> None:
    """After the main process died: wait for the others to leave, then SIGKILL them (systemd's final kill)."""
    deadline = time.monotonic() + grace
    while session_pids(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    for pid in session_pids(proc.pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
    deadline = time.monotonic() + 10
    while session_pids(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.02)


def child_pid(parent: int) -> int | None:
    try:
        for task in os.listdir(f"/proc/{parent}/task"):
            kids = Path(f"/proc/{parent}/task/{task}/children").read_text().split()
            if kids:
                return int(kids[0])
    except OSError:
        return None
    return None


def tracer_of(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("TracerPid:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def strace_prefix(out: Path, trace: Sequence[str] = MUTATING, paths: Sequence[str] = (), inject: str = "",
                  attach: int | None = None) -> list[str]:
    cmd = ["strace", "-f", "-q", "-y", "-ttt", "-s", "120", "-o", str(out),
           "-e", "trace=" + ",".join(trace)]
    if attach is None:
        cmd += ["-b", "execve"]   # the supervisor and its threads; not the forkserver and its children
    for p in paths:
        cmd += ["-P", p]
    if inject:
        cmd += ["-e", "inject=" + inject]
    if attach is not None:
        cmd += ["-p", str(attach)]
    return cmd


@dataclass
class Phase:
    """What one daemon start did."""

    exit_code: int | None
    settled: bool
    seconds: float
    trace: Path | None = None
    stuck: bool = False
    crash: str = ""     # the last line of stderr when it exited with an error (a traceback)


def drive(run: Run, names: Sequence[str], proc: subprocess.Popen[bytes], supervisor: Callable[[], int | None],
          timeout: float) -> Phase:
    """Wait for the daemon to settle ``names``, stop it with SIGTERM, wait for it.

    ``proc`` is the process started (the daemon, or strace running it);
    ``supervisor`` finds the daemon's pid. Returns early if it dies; marks the
    phase stuck if it has not settled within ``timeout``.
    """
    t0 = time.monotonic()
    stuck = False
    while proc.poll() is None and not run.settled(names):
        if time.monotonic() - t0 > timeout:
            stuck = True
            break
        time.sleep(0.01)
    settled = run.settled(names)
    if proc.poll() is None:
        pid = _titled_supervisor(proc, supervisor)
        if pid:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        try:
            proc.wait(40)
        except subprocess.TimeoutExpired:
            stuck = True
            for p in session_pids(proc.pid):
                try:
                    os.kill(p, signal.SIGKILL)
                except ProcessLookupError:
                    pass
    code = proc.wait(30)
    reap_session(proc)
    crash = ""
    if code not in (0, -9, 137):
        lines = (run.root / "stderr.log").read_text(errors="replace").strip().splitlines()
        crash = lines[-1][:200] if lines else ""
    return Phase(code, settled, time.monotonic() - t0, stuck=stuck, crash=crash)


def _titled_supervisor(proc: subprocess.Popen[bytes], supervisor: Callable[[], int | None],
                       timeout: float = 20.0) -> int | None:
    """The supervisor's pid once it has its title (its signal handlers follow at once)."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        pid = supervisor()
        if pid:
            try:
                if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"ipspool: supervisor"):
                    time.sleep(0.05)
                    return pid
            except OSError:
                pass
        time.sleep(0.01)
    return supervisor()


def finish(run: Run, names: Sequence[str], traced: bool, tag: str, timeout: float = 60.0,
           max_starts: int = 4) -> list[Phase]:
    """Start the daemon normally (as systemd restarts it) until it has settled everything, then stop it."""
    phases = []
    for attempt in range(max_starts):
        out = run.root / f"{tag}-{attempt}.trace"
        proc = run.popen(strace_prefix(out) if traced else ())

        def supervisor(proc: subprocess.Popen[bytes] = proc) -> int | None:
            return child_pid(proc.pid) if traced else proc.pid

        phase = drive(run, names, proc, supervisor, timeout)
        phase.trace = out if traced else None
        phases.append(phase)
        if phase.settled and phase.exit_code == 0:
            break
        time.sleep(0.1)  # systemd's RestartSec, shortened
    return phases


# ============================================================================
# exploration
# ============================================================================


@dataclass(frozen=True)
class Choice:
    """How strace hits one call: the -P paths (templates) and the ordinal K."""

    paths: tuple[str, ...]  # templates with {ROOT} and {W}; empty: count every call of the syscall
    when: int
    wide: bool              # the whole spool: the cut run's trace shows every spool operation

    def describe(self, name: str) -> str:
        return f"{name} #{self.when}, " + ("spool paths" if self.wide else ("own paths" if self.paths else "all calls"))


@dataclass
class Target:
    """One call of the recording, and how strace can hit exactly it."""

    index: int           # N: its position among the process's mutating calls (1-based)
    call: Call
    role: str            # "main", or "thread-K" in order of appearance
    signature: str       # normalized, to check what a run hit
    kill: Choice | None  # no other thread reaches K before it
    error: Choice | None  # no other thread reaches K at all (an error must land once)
    effect: bool         # changes the spool (not a log line, not outside it, not a failing mkdir)

    def describe(self, mode: str = "kill") -> str:
        choice = self.kill if mode == "kill" else self.error
        how = choice.describe(self.call.name) if choice else "not explorable"
        return f"N={self.index} {self.signature} [{self.role}, {how}]"


@dataclass
class PointResult:
    target: Target
    mode: str                  # "kill" or an errno
    hit: str                   # "exact", "not reached", "inexact: ..."
    audit: AuditReport
    order: list[str]
    phases: list[Phase]
    seconds: float
    extra_injections: int = 0
    kept: Path | None = None   # the run directory, kept when something failed
    attempts: int = 1          # runs until the target was reached (Explorer.explore)

    @property
    def failed(self) -> bool:
        return bool(self.audit.problems or self.order or self.hit.startswith("inexact")
                    or any(p.stuck for p in self.phases) or self.extra_injections)

    def describe(self) -> str:
        what = [*self.audit.problems, *self.order]
        for i, p in enumerate(self.phases):
            if p.stuck:
                what.append(f"start {i + 1} did not settle within {p.seconds:.0f}s"
                            + ("; a restart settled it" if self.phases[-1].settled else "; never settled"))
            if p.crash:
                what.append(f"start {i + 1} exited {p.exit_code}: {p.crash}")
        if self.hit != "exact":
            what.append(self.hit)
        if self.extra_injections:
            what.append(f"{self.extra_injections} more calls were injected")
        codes = [p.exit_code for p in self.phases]
        return f"{self.mode} at {self.target.describe(self.mode)} exits={codes}: " + "; ".join(what)


_PART = re.compile(r"(\d+)(\.\d+\.\d+\.part)$")
_OTHER_SCHEDULE = "not reached: another schedule,"


class Explorer:
    """Records one process of a scenario, then cuts it at every mutating call."""

    def __init__(self, scenario: Scenario, workdir: Path, role: str = "supervisor",
                 python: str = sys.executable, timeout: float = 45.0, error_timeout: float = 15.0,
                 reach_tries: int = 5) -> None:
        assert role in ("supervisor", "worker")
        self.reach_tries = reach_tries
        self.error_timeout = error_timeout
        self.scenario = scenario
        self.workdir = workdir
        self.role = role
        self.python = python
        self.timeout = timeout
        self.expected: dict[str, Expected] = {}
        self.recording: list[Call] = []
        self.targets: list[Target] = []
        self.baseline: list[str] = []
        self.count = 0
        workdir.mkdir(parents=True, exist_ok=True)

    # -- the starting spool ------------------------------------------------

    def build(self, root: Path, with_inputs: bool = True) -> Run:
        run = Run(root, self.scenario.settings, self.python)
        for sub in ("tmp", "incoming", "active", "done", "failed", "results"):
            (run.spool / sub).mkdir(parents=True, exist_ok=True, mode=0o750)
        if with_inputs:
            self.place_inputs(run)
        if self.scenario.prepare and self.expected:
            self.scenario.prepare(run.spool, run.results, self.expected)
        return run

    def place_inputs(self, run: Run) -> None:
        """As a producer does (tmp/, rename); mtimes in the past, so the start-up scan takes them."""
        old = time.time() - 60
        for name, data in self.scenario.inputs.items():
            tmp = run.spool / "tmp" / f".{name}"
            tmp.write_bytes(data)
            os.utime(tmp, (old, old))
            target = run.spool / "incoming" / self.scenario.placed.get(name, name)
            target.parent.mkdir(exist_ok=True, mode=0o750)  # a producer subdirectory
            os.rename(tmp, target)
        for name, kind in self.scenario.specials.items():
            path = run.spool / "incoming" / name
            if kind == "symlink":
                path.symlink_to("/etc/hostname")
            else:
                os.mkfifo(path)
            os.utime(path, (old, old), follow_symlinks=False)

    def fresh(self, label: str, with_inputs: bool = True) -> Run:
        self.count += 1
        root = self.workdir / f"{self.count:04d}-{label}"
        if root.exists():
            shutil.rmtree(root)
        return self.build(root, with_inputs)

    @property
    def names(self) -> list[str]:
        return list(self.scenario.all_inputs)

    # -- reference ---------------------------------------------------------

    def reference(self) -> dict[str, Expected]:
        """An uninterrupted run: the results every cut run must reproduce byte for byte."""
        sc = self.scenario
        if sc.preplaced:
            # Recovery starts from results: take them from a plain run of the same inputs.
            plain = Explorer(Scenario(sc.name + "-plain", dict(sc.preplaced), sc.settings), self.workdir / "plain",
                             "supervisor", self.python, self.timeout)
            self.expected = dict(plain.reference())
            self.expected["halffailed.txt"] = Expected(reason="too_large", input=sc.preplaced["halffailed.txt"])
            run = self.fresh("reference")
            phases = finish(run, self.names, traced=False, tag="reference")
            assert phases[-1].settled, "recovery reference run did not settle"
            got = read_expected(run.spool, run.results, sc.all_inputs)
            assert got == self.expected, "recovery did not reproduce the plain run"
        else:
            run = self.fresh("reference")
            phases = finish(run, self.names, traced=False, tag="reference")
            assert phases[-1].settled and phases[-1].exit_code == 0, f"reference run failed: {phases}"
            self.expected = read_expected(run.spool, run.results, sc.all_inputs)
        report = audit_spool(run.spool, run.results, self.expected, run.keep)
        assert report.ok, f"the uninterrupted run fails its own audit: {report.problems}"
        shutil.rmtree(run.root, ignore_errors=True)
        return self.expected

    # -- recording ---------------------------------------------------------

    def wide_paths(self, run: Run, worker_pid: int | None = None) -> list[str]:
        """Every directory and file of the spool a call can name (strace -P takes exact paths)."""
        s = run.spool
        paths = [str(s), *(str(s / sub) for sub in ("tmp", "incoming", "active", "done", "failed", "results")),
                 str(s / "results" / ".parts"), str(s / ".ipspool"), str(s / ".ipspool" / "authkey"),
                 str(run.log_path)]
        paths += sorted({str(s / "incoming" / os.path.dirname(p)) for p in self.scenario.placed.values()})
        paths += [str(s / "results" / ".parts" / f"{j}.{kind}") for j in range(1, self.scenario.jobs + 1)
                  for kind in ("assembled", "expanded", "summary")]
        if worker_pid is not None:
            chunks = max((len(d) // 4096 + 2 for d in self.scenario.inputs.values()), default=2)
            paths += [str(s / "results" / ".parts" / f"{worker_pid}.{j}.{i}.part")
                      for j in range(1, self.scenario.jobs + 1) for i in range(chunks)]
        return paths

    def record(self) -> list[Target]:
        """Trace the process once, uninterrupted; its mutating calls are the crash points."""
        run = self.fresh("record", with_inputs=self.role == "supervisor")
        out = run.root / "record.trace"
        if self.role == "supervisor":
            proc = run.popen(strace_prefix(out))
            phase = drive(run, self.names, proc, lambda: child_pid(proc.pid), self.timeout)
            calls, _ = parse_trace(out)
            pid = min((c.tid for c in calls), default=0)
            pids = {pid: "{SUP}"}
            wide = self.wide_paths(run)
        else:
            phase, pid = self.run_worker(run, out, "", ())
            calls, _ = parse_trace(out)
            pids = {pid: "{W}"}
            wide = self.wide_paths(run, pid)
        assert phase.settled, f"recording run did not settle: {phase}"
        report = audit_spool(run.spool, run.results, self.expected, run.keep)
        assert report.ok, f"recording run fails the audit: {report.problems}"
        self.record_run = run
        self.recording = calls
        # The uninterrupted run's own order: what every cut run inherits.
        self.baseline = order_audit(calls, run.spool, run.results, run.keep) if self.role == "supervisor" else []
        self.norm = Normalizer(run.root, pids)
        self.targets = self.make_targets(calls, pid, wide)
        return self.targets

    def template(self, path: str) -> str | None:
        """A path as a template valid in any run ({ROOT}, {W}); None if it names something random."""
        text = path.replace(str(self.record_run.root), "{ROOT}")
        if self.role == "worker":
            wpid = next(k for k, v in self.norm.pids.items() if v == "{W}")
            text = _PART.sub(lambda m: ("{W}" if int(m.group(1)) == wpid else m.group(1)) + m.group(2), text)
        normalized = self.norm(path)
        if any(x in normalized for x in ("{RND}", "{PID}", "{SUP}")) or _PART.search(text.replace("{W}", "")):
            return None
        if not text.startswith(("/", "{ROOT}")) and os.path.lexists("/" + text):
            return None  # strace would also select what this resolves to from its cwd
        return text

    def make_targets(self, calls: list[Call], pid: int, wide: list[str]) -> list[Target]:
        roles: dict[int, str] = {}
        for c in calls:
            if c.tid not in roles:
                roles[c.tid] = "main" if c.tid == pid else f"thread-{len(roles)}"
        wide_t = tuple(t for p in wide if (t := self.template(p)))
        spool = str(self.record_run.spool)
        log = str(self.record_run.log_path)
        targets = []
        for n, call in enumerate((c for c in calls if is_mutating(c)), 1):
            keys = match_keys(call)
            own = tuple(sorted({t for k in keys if (t := self.template(k))}))
            found: dict[bool, Choice | None] = {}
            for strict in (False, True):
                found[strict] = None
                for paths, is_wide in ((wide_t, True), (own, False), ((), False)):
                    real = {self.expand(p, self.record_run.root, self._recorded_worker()) for p in paths}
                    if paths and not keys & real:
                        continue
                    when = self._ordinal(calls, call, real, strict)
                    if when is not None:
                        found[strict] = Choice(paths, when, is_wide)
                        break
            effect = any(k.startswith(spool) for k in keys) and not (
                call.name in ("write", "pwrite64") and call.fd_path(0) == log)
            if call.name in ("mkdir", "mkdirat") and not call.ok:
                effect = False
            targets.append(Target(n, call, roles[call.tid], self.norm.signature(call), found[False], found[True],
                                  effect))
        return targets

    def _recorded_worker(self) -> int | None:
        return next((k for k, v in self.norm.pids.items() if v == "{W}"), None)

    @staticmethod
    def expand(path: str, root: Path, worker: int | None) -> str:
        path = path.replace("{ROOT}", str(root))
        return path.replace("{W}", str(worker)) if worker is not None else path

    @staticmethod
    def _ordinal(calls: list[Call], call: Call, paths: set[str], strict: bool) -> int | None:
        """K such that the K-th matching call of this syscall in its thread is ``call``, and no other
        thread makes its K-th matching call before it (``strict``: at all, so an error lands once)."""
        def matches(c: Call) -> bool:
            return c.name == call.name and (not paths or bool(match_keys(c) & paths))

        mine = [c for c in calls if c.tid == call.tid and matches(c)]
        when = next(i for i, c in enumerate(mine, 1) if c is call)
        if when > 65535:
            return None
        others = Counter(c.tid for c in calls if c.tid != call.tid and matches(c) and (strict or c.seq < call.seq))
        if any(count >= when for count in others.values()):
            return None
        return when

    # -- one point ---------------------------------------------------------

    def run_worker(self, run: Run, out: Path, inject: str, paths: Sequence[str],
                   sup_trace: Path | None = None, timeout: float | None = None) -> tuple[Phase, int]:
        """Start the daemon, attach strace to its worker, then submit the inputs."""
        proc = run.popen(strace_prefix(sup_trace) if sup_trace else ())
        deadline = time.monotonic() + 30
        pid = None
        while pid is None and time.monotonic() < deadline and proc.poll() is None:
            for e in run.read_events():
                if e.get("event") == "daemon.ready":
                    pid = int(e["workers"][0])
            time.sleep(0.02)
        assert pid is not None, "the daemon never became ready"
        use = [self.expand(p, run.root, pid) for p in paths]
        tracer = subprocess.Popen(strace_prefix(out, paths=use, inject=inject, attach=pid),
                                  stdout=subprocess.DEVNULL, stderr=open(run.root / "strace.log", "ab"))  # noqa: SIM115
        while tracer_of(pid) != tracer.pid and time.monotonic() < deadline:
            time.sleep(0.01)
        self.place_inputs(run)

        def supervisor() -> int | None:
            return child_pid(proc.pid) if sup_trace else proc.pid

        phase = drive(run, self.names, proc, supervisor, timeout or self.timeout)
        try:
            tracer.wait(10)
        except subprocess.TimeoutExpired:
            tracer.send_signal(signal.SIGINT)
            tracer.wait(10)
        return phase, pid

    def explore(self, target: Target, mode: str = "kill") -> PointResult:
        """Run the scenario from a fresh spool, cut at ``target`` (SIGKILL or an errno), restart, audit.

        How many calls a thread makes can depend on timing: the assembler thread makes one ftruncate
        per append, and an append takes in every finished part that is there (Committer.assemble), so
        when parts arrive faster there are fewer appends. A run whose own trace shows that no thread
        made K such calls had another schedule, not a missed call: it is run again, from a fresh
        spool, up to ``reach_tries`` times in all (``PointResult.attempts``).
        """
        spent = 0.0
        for attempt in range(1, self.reach_tries + 1):
            result = self._explore_once(target, mode)
            spent += result.seconds
            result.attempts, result.seconds = attempt, spent
            if not result.hit.startswith(_OTHER_SCHEDULE):
                break
            if attempt < self.reach_tries and result.kept:
                shutil.rmtree(result.kept, ignore_errors=True)
        return result

    def _explore_once(self, target: Target, mode: str) -> PointResult:
        t0 = time.monotonic()
        run = self.fresh(f"{self.role[:3]}-{target.index:03d}-{mode}", with_inputs=self.role == "supervisor")
        out = run.root / "cut.trace"
        action = "signal=KILL" if mode == "kill" else f"error={mode}"
        choice = target.kill if mode == "kill" else target.error
        assert choice is not None, f"{target.describe(mode)}: not explorable"
        inject = f"{target.call.name}:{action}:when={choice.when}"
        # A daemon that goes on after an error gets this long to settle, then is restarted.
        limit = self.timeout if mode == "kill" else self.error_timeout
        if self.role == "supervisor":
            paths = [self.expand(p, run.root, None) for p in choice.paths]
            proc = run.popen(strace_prefix(out, paths=paths, inject=inject))
            phase = drive(run, self.names, proc, lambda: child_pid(proc.pid), limit)
            calls, ends = parse_trace(out)
            pid = min((c.tid for c in calls), default=0)
            norm = Normalizer(run.root, {pid: "{SUP}"})
            if choice.wide or not choice.paths:
                history = list(calls)
            else:  # the cut run shows only the target's paths: its past is the recording's
                before = [c for c in self.recording if c.seq < target.call.seq]
                history = relocate(before, self.record_run.root, run.root)
        else:
            sup_trace = run.root / "sup.trace"
            phase, pid = self.run_worker(run, out, inject, choice.paths, sup_trace, limit)
            calls, ends = parse_trace(out)
            norm = Normalizer(run.root, {pid: "{W}"})
            history = sorted([*parse_trace(sup_trace)[0], *calls], key=lambda c: c.ts)
        phases = [phase]
        hit, extra = self._check_hit(calls, ends, target, norm, mode, choice, run.root,
                                     pid if self.role == "worker" else None)
        if (mode == "kill" and self.role == "supervisor") or phase.exit_code != 0 or not phase.settled:
            # as systemd would: start it again, let it finish, stop it
            phases += finish(run, self.names, traced=True, tag="restart", timeout=self.timeout)
        report = audit_spool(run.spool, run.results, self.expected, run.keep)
        if report.problems and phases[-1].settled:
            # Is it only until the next start? (recovery empties results/.parts/)
            phases += finish(run, self.names, traced=True, tag="recheck", timeout=self.timeout)
            again = audit_spool(run.spool, run.results, self.expected, run.keep)
            still = set(again.problems)
            report.problems = [p + (" (still there after a restart)" if p in still else
                                    " (until the next start: a restart cleared it)") for p in report.problems]
            first = set(report.problems)
            report.problems += [p + " (after a restart)" for p in again.problems if p not in first]
        for p in phases[1:]:
            if p.trace:
                history += parse_trace(p.trace)[0]
        order = order_audit(history, run.spool, run.results, run.keep)
        result = PointResult(target, mode, hit, report, order, phases, time.monotonic() - t0, extra)
        if result.failed:
            result.kept = run.root
        else:
            shutil.rmtree(run.root, ignore_errors=True)
        return result

    def _check_hit(self, calls: list[Call], ends: Mapping[int, str], target: Target, norm: Normalizer,
                   mode: str, choice: Choice, root: Path, worker: int | None) -> tuple[str, int]:
        """Prove from the run's own trace that the call cut (or failed) is the target.

        The call must have the target's signature, and be the K-th call of its syscall in its thread
        among those the trace shows; every shown call must match the path set as match_keys says
        (the trace shows exactly what strace counted: so strace and the recording agree on K).
        """
        want = target.signature
        name = target.call.name
        if mode == "kill":
            killed = {tid for tid, how in ends.items() if "SIGKILL" in how}
            cut = [c for c in calls if c.ret == "?" and c.tid in killed and c.name == name]
        else:
            cut = [c for c in calls if c.injected]
        paths = {self.expand(p, root, worker) for p in choice.paths}
        if not cut:
            made = Counter(c.tid for c in calls if c.name == name and (not paths or match_keys(c) & paths))
            most = max(made.values(), default=0)
            if most < choice.when:
                return f"{_OTHER_SCHEDULE} at most {most} {name} calls in a thread, not {choice.when}", 0
            return "not reached", 0
        extra = len(cut) - 1 if mode != "kill" else 0
        hit = [c for c in cut if norm.signature(c) == want]
        if len(hit) != 1:
            return f"inexact: cut at {[norm.signature(c) for c in cut]}", extra
        shown = [c for c in calls if c.tid == hit[0].tid and c.name == name and c.seq <= hit[0].seq]
        if paths and not all(match_keys(c) & paths for c in shown):
            return "inexact: strace showed calls that do not match the paths", extra
        if len(shown) != choice.when:
            return f"inexact: it was call {len(shown)} of its kind, not {choice.when}", extra
        return "exact", extra


def error_modes(target: Target) -> tuple[str, ...]:
    return ERRNOS.get(target.call.name, ()) if target.error is not None else ()


def summarize(results: Sequence[PointResult]) -> dict[str, Any]:
    by: dict[str, list[str]] = defaultdict(list)
    hits = Counter(r.hit.split(":")[0] for r in results)
    for r in results:
        if r.failed:
            by[r.mode].append(r.describe())
    return {"points": len(results), "hits": dict(hits), "failures": dict(by),
            "seconds": round(sum(r.seconds for r in results), 1)}


def point_record(r: PointResult, scenario: str, role: str) -> dict[str, Any]:
    """One explored point, as a line of the JSONL report."""
    return {
        "scenario": scenario, "role": role, "n": r.target.index, "mode": r.mode, "call": r.target.signature,
        "thread": r.target.role, "how": r.target.describe(r.mode), "hit": r.hit, "failed": r.failed,
        "problems": r.audit.problems, "order": r.order, "notes": r.audit.notes,
        "exits": [p.exit_code for p in r.phases], "crash": [p.crash for p in r.phases if p.crash],
        "stuck": [round(p.seconds, 1) for p in r.phases if p.stuck], "outcomes": r.audit.outcomes,
        "seconds": round(r.seconds, 2), "kept": str(r.kept or ""), "extra_injections": r.extra_injections,
        "attempts": r.attempts,
        "settled": bool(r.phases) and r.phases[-1].settled,
    }


def explore_all(scenario: Scenario, role: str, modes: Sequence[str], workdir: Path,
                select: Callable[[Target], bool] | None = None, report: Path | None = None,
                log: Callable[[str], None] | None = None) -> tuple[Explorer, list[PointResult]]:
    """Reference, recording, then every (selected) point in every mode ("kill" and errnos)."""
    ex = Explorer(scenario, workdir, role)
    ex.reference()
    ex.record()
    results = []
    for target in ex.targets:
        if select and not select(target):
            continue
        for mode in modes:
            if mode == "kill" and target.kill is None:
                continue
            if mode != "kill" and mode not in error_modes(target):
                continue
            r = ex.explore(target, mode)
            results.append(r)
            if report:
                with open(report, "a") as handle:
                    handle.write(json.dumps(point_record(r, scenario.name, role)) + "\n")
            if log:
                log(f"{r.seconds:5.1f}s {r.hit[:12]:12} {'FAIL' if r.failed else 'ok  '} "
                    f"{r.describe() if r.failed else target.describe(mode) + ' ' + mode}")
    return ex, results


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="Explore crash and error points of one scenario.")
    parser.add_argument("scenario", choices=sorted(scenarios()))
    parser.add_argument("--role", choices=("supervisor", "worker"), default="supervisor")
    parser.add_argument("--modes", default="kill", help="comma-separated: kill,EIO,ENOSPC,EDQUOT")
    parser.add_argument("--only", default="", help="comma-separated call numbers N")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/ipspool-crashpoints"))
    parser.add_argument("--report", type=Path)
    args = parser.parse_args(argv)
    only = {int(x) for x in args.only.split(",") if x}
    workdir = args.workdir / f"{args.scenario}-{args.role}"
    shutil.rmtree(workdir, ignore_errors=True)
    _, results = explore_all(scenarios()[args.scenario], args.role, args.modes.split(","), workdir,
                              (lambda t: t.index in only) if only else None, args.report,
                              lambda line: print(line, flush=True))
    print(json.dumps(summarize(results), indent=1))
    return 1 if any(r.failed for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())


# ============================================================================
# findings: failures grouped by cause
# ============================================================================

FINDINGS: dict[str, str] = {
    "recover-retires-unsynced-result": (
        "Spool.recover retires active/X because results/X.jsonl exists, without fsyncing results/ first: "
        "after a crash between the link and the fsync of results/, the input reaches done/ while its result's "
        "link may still be only in the page cache (R)"),
    "recover-fails-unsynced-record": (
        "Spool.recover moves active/X to failed/ because failed/X.error.json exists, without fsyncing failed/ "
        "first: the record may not be durable when the input moves beside it (F)"),
    "fsync-error-then-trusted": (
        "a failed fsync of a spool directory raises out of the commit (or failure) path and kills the "
        "supervisor; after the restart the work goes on as if that fsync had succeeded: a claim, a result "
        "link or a failure record whose fsync failed is relied on, never redone (fsyncgate)"),
    "done-never-resynced": (
        "after a crash or an fsync error between active/X -> done/X and the fsync of done/, nothing fsyncs "
        "done/ again, while active/ is fsync'd later: the input's place in done/ is never made durable (D)"),
    "dead-worker-part-left": (
        "a worker killed after creating its part file leaves results/.parts/PID.JOB.CHUNK.part behind; the "
        "chunk is redone under the new worker's pid and the orphan stays until the next daemon start"),
    "stuck-until-restart": (
        "after the injected error the input stayed in active/ (its failure record could not be written, or "
        "moved) until the daemon was restarted: nothing retries it while the daemon runs"),
    "fails-on-transient-error": (
        "one failed call (an EIO while joining a multi-chunk file's parts) sends the input to failed/ for good "
        "(assembly_failed), where ENOSPC is retried: allowed by the audit, but the file is lost to processing"),
    "run-folder-left-until-restart": (
        "an error removing this run's parts folder at a stop (Spool.end_run) leaves it, empty, in "
        "results/.parts/ until the next start, whose recovery removes it: as end_run documents, and checked "
        "by starting the daemon again and auditing once more"),
}
# Findings the audit allows (a failure with its reason, or a leftover the next start is seen to remove):
# reported, never a test failure.
ALLOWED = ("fails-on-transient-error", "run-folder-left-until-restart")

# Spool.end_run's rmdir of this run's folder, as Normalizer.signature shows it.
_END_RUN_RMDIR = "unlinkat(<{ROOT}/spool/results/.parts>, 'run.{RND}', AT_REMOVEDIR)"
_EMPTY_RUN_FOLDER_CLEARED = re.compile(
    r"empty run folder left in results/\.parts/: \['run\.\d+\.\d+'\] \(until the next start: a restart cleared it\)")


def _end_run_leftover(rec: Mapping[str, Any], problem: str) -> bool:
    """An error on end_run's rmdir left that one folder, empty, and the next start removed it."""
    return (rec["mode"] != "kill" and rec["call"] == _END_RUN_RMDIR
            and _EMPTY_RUN_FOLDER_CLEARED.fullmatch(problem) is not None)


def classify(r: PointResult, role: str) -> set[str]:
    """The findings a failed point shows; problems no finding explains come back as "unknown: ..."."""
    return classify_record(point_record(r, "", role))


def classify_record(rec: Mapping[str, Any]) -> set[str]:  # noqa: PLR0912 - one branch per kind of problem
    """``classify`` for a line of the JSONL report."""
    found: set[str] = set()
    for o in rec["order"]:
        rule = o.split(" ", 1)[0]
        if o.endswith("failed in between, and it went ahead"):
            found.add("fsync-error-then-trusted")
        elif rule == "R":
            found.add("recover-retires-unsynced-result")
        elif rule == "F":
            found.add("recover-fails-unsynced-record")
        elif rule == "D":
            found.add("done-never-resynced")
        else:
            found.add(f"unknown: {o}")
    for p in rec["problems"]:
        if rec["role"] == "worker" and p.startswith("part files left") and "a restart cleared it" in p:
            found.add("dead-worker-part-left")
        elif _end_run_leftover(rec, p):
            found.add("run-folder-left-until-restart")
        else:
            found.add(f"unknown: {p}")
    if rec["hit"] != "exact":
        found.add(f"unknown: {rec['hit']}")
    if rec["extra_injections"]:
        found.add(f"unknown: {rec['extra_injections']} more calls were injected")
    if rec["stuck"]:
        found.add("stuck-until-restart" if rec["settled"] else "unknown: never settled")
    for note in rec["notes"]:
        m = re.search(r": failed \((\w+)\) where the uninterrupted run produced a result", note)
        found.add(f"fails-on-transient-error: {m.group(1)}" if m else f"unknown: {note}")
    return found


def findings_report(records: Iterable[Mapping[str, Any]]) -> dict[str, list[str]]:
    """Finding -> the points that show it ("scenario/role mode N call")."""
    out: dict[str, list[str]] = defaultdict(list)
    for rec in records:
        for f in sorted(classify_record(rec)):
            out[f].append(f"{rec['scenario']}/{rec['role']} {rec['mode']} N={rec['n']} {rec['call']}")
    return dict(out)
