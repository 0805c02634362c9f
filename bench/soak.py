"""Soak: kill -9 random processes of the daemon while a producer keeps submitting, then audit.

    python -m bench.soak --rounds 1000        (make soak; SOAK_ARGS="--rounds 200")

A producer thread submits files of mixed sizes the way ``ipspool submit``
does (write in tmp/, fsync, rename into incoming/ or, one file in four, into
one of two producer subdirectories, incoming/p1/ and incoming/p2/), now and
then one over ``spool.max_file_bytes`` and a symlink. Each round waits a random moment and
SIGKILLs one random process of the daemon: a worker, the stats Manager, the
multiprocessing forkserver, its resource tracker, or the supervisor (found by
their titles, "ipspool: worker N" ..., and the helpers by their command lines
and parent). A supervisor that died, killed or by itself, is restarted as
systemd would (its leftover processes killed first, like the unit's cgroup).
After the last round the producer stops, the daemon is stopped, started once
more to drain, stopped, and the spool is audited with the audit of the crash
tests (tests/crashpoints.py): every file's result byte-identical to a clean
run of the same inputs on a fresh spool, or its failure record; nothing left.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

from tests.support import crashpoints as cp

REPO = Path(__file__).resolve().parent.parent

KINDS = ("worker", "stats", "forkserver", "resource_tracker", "supervisor")
MAX_FILE_BYTES = 200_000
SUBDIRS = ("p1", "p2")  # producer subdirectories: incoming/p1/NAME is job p1~NAME


def settings(processes: int) -> dict[str, dict[str, object]]:
    return {
        "spool": {"rescan_interval": 2.0, "max_file_bytes": MAX_FILE_BYTES, "subdirs": list(SUBDIRS)},
        "workers": {"processes": processes, "threads": 2, "chunk_bytes": 4096, "max_attempts": 20,
                    "heartbeat_timeout": 15.0, "graceful_timeout": 30.0},
    }


class Producer(threading.Thread):
    """Submits files through tmp/ and rename(2) until told to stop; remembers what it sent."""

    def __init__(self, spool: Path, seed: int, rate: float) -> None:
        super().__init__(daemon=True)
        self.spool = spool
        self.rng = random.Random(seed)
        self.rate = rate
        self.stop_event = threading.Event()
        self.sent: dict[str, bytes | None] = {}   # by job name; None: a symlink
        self.placed: dict[str, str] = {}  # job name -> its path under incoming/, where not the same
        self.kinds: Counter[str] = Counter()

    def content(self, i: int) -> tuple[str, bytes]:
        roll = self.rng.random()
        if roll < 0.01:
            return "too_large", cp.ip_lines(15_000, i)          # > max_file_bytes: failed/, too_large
        if roll < 0.10:
            return "large", cp.ip_lines(self.rng.randrange(1000, 4000), i)  # several 4 KiB chunks
        return "small", cp.ip_lines(self.rng.randrange(1, 200), i)

    def submit(self, name: str, data: bytes) -> None:
        tmp = self.spool / "tmp" / f".{name}.part"
        where = self.placed.get(name, name)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, self.spool / "incoming" / where)

    def run(self) -> None:
        i = 0
        while not self.stop_event.is_set():
            i += 1
            name = f"soak-{i:06d}.txt"
            if self.rng.random() < 0.005:
                (self.spool / "incoming" / name).symlink_to("/etc/hostname")
                self.sent[name] = None
                self.kinds["symlink"] += 1
            else:
                if self.rng.random() < 0.25:  # into a producer subdirectory: job SUB~NAME
                    sub = self.rng.choice(SUBDIRS)
                    self.placed[f"{sub}~{name}"] = f"{sub}/{name}"
                    name = f"{sub}~{name}"
                    self.kinds["subdir"] += 1
                kind, data = self.content(i)
                self.submit(name, data)
                self.sent[name] = data
                self.kinds[kind] += 1
            self.stop_event.wait(self.rng.expovariate(self.rate))


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def parent(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def processes(sid: int, supervisor: int) -> dict[str, list[int]]:
    """The daemon's processes by kind, from their titles and command lines."""
    found: dict[str, list[int]] = {k: [] for k in KINDS}
    for pid in cp.session_pids(sid):
        line = cmdline(pid)
        if line.startswith("ipspool: supervisor"):
            found["supervisor"].append(pid)
        elif line.startswith("ipspool: worker"):
            found["worker"].append(pid)
        elif line.startswith("ipspool: stats"):
            found["stats"].append(pid)
        elif "multiprocessing.forkserver" in line and parent(pid) == supervisor:
            found["forkserver"].append(pid)
        elif "multiprocessing.resource_tracker" in line:
            found["resource_tracker"].append(pid)
    return found


class Soak:
    def __init__(self, root: Path, rounds: int, seed: int, processes: int, rate: float) -> None:
        self.root = root
        self.rounds = rounds
        self.rng = random.Random(seed)
        self.run = cp.Run(root / "soak", settings(processes))
        for sub in ("tmp", "incoming", "active", "done", "failed", "results", *(f"incoming/{p}" for p in SUBDIRS)):
            (self.run.spool / sub).mkdir(parents=True, exist_ok=True, mode=0o750)
        self.producer = Producer(self.run.spool, seed, rate)
        self.proc: subprocess.Popen[bytes] | None = None
        self.kills: Counter[str] = Counter()
        self.starts = 0
        self.exits: Counter[str] = Counter()

    def start(self) -> None:
        """Start the daemon and wait until it is ready (or dead): rounds kill a running daemon, not a booting one."""
        seen = len(self.run.read_events())
        self.proc = self.run.popen()
        self.starts += 1
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and self.proc.poll() is None:
            if any(e.get("event") == "daemon.ready" and e.get("pid") == self.proc.pid
                   for e in self.run.read_events()[seen:]):
                return
            time.sleep(0.02)

    def restart_if_dead(self) -> None:
        """A dead supervisor: kill what is left of its processes (the cgroup), start it again."""
        assert self.proc is not None
        code = self.proc.poll()
        if code is None:
            return
        self.exits[str(code)] += 1
        cp.reap_session(self.proc, grace=1.0)
        time.sleep(0.1)  # RestartSec, shortened
        self.start()

    def round(self) -> None:
        assert self.proc is not None
        time.sleep(self.rng.uniform(0.05, 0.5))
        self.restart_if_dead()
        present = {k: v for k, v in processes(self.proc.pid, self.proc.pid).items() if v}
        if not present:
            return
        kind = self.rng.choice(sorted(present))
        pid = self.rng.choice(present[kind])
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        self.kills[kind] += 1
        if kind == "supervisor":
            self.proc.wait(30)
            self.restart_if_dead()

    def stop(self) -> int | None:
        assert self.proc is not None
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(120)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        code = self.proc.wait(30)
        cp.reap_session(self.proc)
        return code

    def drain(self, timeout: float) -> bool:
        """Start once more, cleanly, until every file submitted has its outcome; stop."""
        self.start()
        assert self.proc is not None
        names = list(self.producer.sent)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self.run.settled(names):
            if self.proc.poll() is not None:
                self.restart_if_dead()
            time.sleep(0.1)
        settled = self.run.settled(names)
        self.stop()
        return settled

    def reference(self) -> dict[str, cp.Expected]:
        """The same inputs on a fresh spool, one clean run: what every result must equal."""
        ref = cp.Run(self.root / "reference", settings(2))
        for sub in ("tmp", "incoming", "active", "done", "failed", "results", *(f"incoming/{p}" for p in SUBDIRS)):
            (ref.spool / sub).mkdir(parents=True, exist_ok=True, mode=0o750)
        old = time.time() - 60
        for name, data in self.producer.sent.items():
            path = ref.spool / "incoming" / self.producer.placed.get(name, name)
            if data is None:
                path.symlink_to("/etc/hostname")
            else:
                path.write_bytes(data)
                os.utime(path, (old, old))
        phases = cp.finish(ref, list(self.producer.sent), traced=False, tag="reference", timeout=600)
        assert phases[-1].settled, "the reference run did not finish"
        return cp.read_expected(ref.spool, ref.results, self.producer.sent)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--processes", type=int, default=2, help="daemon workers")
    parser.add_argument("--rate", type=float, default=20.0, help="files submitted per second, on average")
    parser.add_argument("--workdir", type=Path,
                        help="kept afterwards; default: a temporary directory, removed if the audit passes")
    args = parser.parse_args(argv)
    root = args.workdir or Path(tempfile.mkdtemp(prefix="ipspool-soak-"))
    root.mkdir(parents=True, exist_ok=True)
    soak = Soak(root, args.rounds, args.seed, args.processes, args.rate)
    t0 = time.monotonic()
    soak.start()
    soak.producer.start()
    for done in range(1, args.rounds + 1):
        soak.round()
        if done % 100 == 0:
            print(f"round {done}: kills {dict(soak.kills)}, files {len(soak.producer.sent)}, "
                  f"starts {soak.starts}", flush=True)
    soak.producer.stop_event.set()
    soak.producer.join()
    last = soak.stop()
    settled = soak.drain(timeout=600)
    seconds = time.monotonic() - t0
    expected = soak.reference()
    report = cp.audit_spool(soak.run.spool, soak.run.results, expected, soak.run.keep)
    outcomes = Counter(o.split(":")[0] if o == "result" else o for o in report.outcomes.values())
    print(f"rounds: {args.rounds} in {seconds:.0f}s (workers: {args.processes})")
    print(f"kills: {dict(sorted(soak.kills.items()))} (total {sum(soak.kills.values())})")
    print(f"supervisor starts: {soak.starts}; exits seen: {dict(soak.exits)}; last stop: {last}")
    print(f"files submitted: {len(soak.producer.sent)} {dict(soak.producer.kinds)}")
    print(f"outcomes: {dict(outcomes)}; drained: {settled}")
    errors = Counter(line.split(":", 1)[0] for line in
                     (soak.run.root / "stderr.log").read_text(errors="replace").splitlines()
                     if re.match(r"^[A-Za-z]+(Error|Exception)\b", line))
    print(f"exceptions in stderr (supervisor and children): {dict(errors)}")
    for note in report.notes[:20]:
        print(f"note: {note}")
    if report.ok and settled:
        print("audit: OK")
        if not args.workdir:
            shutil.rmtree(root, ignore_errors=True)
        return 0
    print(f"audit: {len(report.problems)} problems (spool kept in {root})")
    for problem in report.problems[:50]:
        print(f"  {problem}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
