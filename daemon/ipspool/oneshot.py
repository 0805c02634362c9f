"""``ipspool process``: the daemon's pipeline on named files, here and now.

No spool and no daemon: each input is split exactly as the daemon splits a
claimed file (``chunking.chunk_bytes_for`` and ``split_file``), each chunk is
read and turned into records by the same calls a daemon worker makes
(``parts.read_chunk``, ``pipeline.process_chunk``, ``parts.PartWriter`` with
its ``max_output_ratio`` cap), on forked worker processes (one per usable
CPU, or ``workers.processes``), each with a thread pool when a stage blocks.
The output is therefore byte for byte the daemon's result for the same input
and configuration.

Nothing big crosses a pipe: a child writes its chunk's records to a part
file in a private scratch directory and returns the path and the counts; the
parent copies the parts to the output in input order, holding at most two
chunks per process in flight. A child that dies breaks the pool
(``BrokenProcessPool``) instead of leaving a join waiting. A child that hangs
is bounded by ``workers.heartbeat_timeout``, as a daemon worker is: children
stamp a shared clock as they go (every few lines, as a daemon worker beats),
and when neither that stamp nor a finished chunk has moved for that long the
workers are killed and the run ends ``TIMED_OUT``.

``--summary FILE`` writes the daemon's ``JOB.summary.json`` document
(``summary.render_summary``) for the whole run, from the chunks' counts, once
the output is complete.

Standard input, and any input that is not a regular file (a pipe, ``<(...)``),
is first copied to the scratch directory, since chunks are byte ranges of a
file. A compressed input (``compression.sniff``) is decompressed there once,
capped by ``spool.max_decompressed_bytes``, then split like any other.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import stat
import sys
import tempfile
import time
from collections import Counter, deque
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any, TextIO

from ipspool.chunking import Chunk, chunk_bytes_for
from ipspool.compression import SNIFF_BYTES, CorruptInput, decompressed_name, expand, sniff
from ipspool.config import Config
from ipspool.exitcodes import ExitCode
from ipspool.formats import Format, Work, chunk_work, head_size, select, split_chunks
from ipspool.formats.work import INLINE_BATCH, PROGRESS_STEP, too_long_output
from ipspool.fsops import write_all
from ipspool.parts import ChunkFailed, PartWriter, read_chunk, write_part
from ipspool.pipeline import Pipeline, load_pipeline
from ipspool.progress import Progress
from ipspool.spool import InputRejected, printable
from ipspool.summary import render_summary

__all__ = ["InputError", "process_files"]

_COPY = 1 << 20
_IN_FLIGHT_PER_PROCESS = 2


class InputError(Exception):
    """An input cannot be processed: the message names it and says why."""


class Hung(Exception):
    """No chunk made progress for ``workers.heartbeat_timeout``: the message names the chunk waited for."""


@dataclass(frozen=True)
class _Plain:
    """An input as a plain regular file that chunks can point into."""

    name: str   # as given on the command line
    path: str
    size: int
    dev: int
    ino: int
    format: Format  # chosen as the daemon chooses it (formats.select)


# -- the child side -----------------------------------------------------------


@dataclass
class _ChildState:
    config: Config
    pipeline: Pipeline
    scratch: str
    threads: ThreadPoolExecutor | None
    progress: Any  # a shared c_double: time.monotonic() at this pool's latest progress

    def beat(self) -> None:
        # CLOCK_MONOTONIC is one clock for every process on the machine, so
        # the parent can compare the stamp with its own time.monotonic().
        self.progress.value = time.monotonic()


# One per worker process, set by its initializer: a ProcessPoolExecutor task
# reaches per-process state only through the module.
_CHILD: _ChildState | None = None


def _child_init(config: Config, scratch: str, progress: Any) -> None:
    import signal

    global _CHILD  # noqa: PLW0603 - see _CHILD
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    pipeline = load_pipeline(config)
    threads = ThreadPoolExecutor(config.workers.threads, thread_name_prefix="stage") if pipeline.blocking else None
    _CHILD = _ChildState(config, pipeline, scratch, threads, progress)
    _CHILD.beat()  # a process that has booted (its stages loaded) has made progress


def _child_chunk(chunk: Chunk) -> tuple[str, dict[str, int]] | tuple[str, str, str]:
    """One chunk into a part file: ("ok"-less) (part, counts), or ("failed", reason, detail)."""
    state = _CHILD
    assert state is not None
    state.beat()
    part = os.path.join(state.scratch, f"{os.getpid()}.{chunk.job}.{chunk.index}.part")
    try:
        if chunk.too_long:
            data, counts = too_long_output(chunk, state.config.spool.max_line_bytes, state.pipeline.names)
            write_part(part, data, sync=False)
            return part, dict(counts)
        raw = read_chunk(chunk)
        writer = PartWriter(part, len(raw), state.config.spool.max_output_ratio)
        total: Counter[str] = Counter()
        for records, piece_counts in _run(state, chunk, raw):
            writer.write(records)
            total.update(piece_counts)
        writer.close(sync=False)
    except ChunkFailed as exc:
        return "failed", exc.reason, exc.detail
    return part, dict(total)


def _run(state: _ChildState, chunk: Chunk, raw: bytes) -> Iterator[tuple[bytes, Counter[str]]]:
    """The chunk's units (lines or records) on this thread, or in one batch per thread when a stage
    blocks, as the daemon's workers batch them (``formats.chunk_work``)."""
    work = chunk_work(chunk.format, raw, chunk.first_line, state.pipeline, chunk.index == 0)
    if work.header:
        yield work.header, Counter()
    units = len(work)
    if state.threads is None or units == 0:
        yield _render(state, work, 0, units, INLINE_BATCH)
        return
    size = max(1, -(-units // state.config.workers.threads))
    futures = [state.threads.submit(_render, state, work, at, min(at + size, units), PROGRESS_STEP)
               for at in range(0, units, size)]
    for future in futures:
        yield future.result()


def _render(state: _ChildState, work: Work, start: int, stop: int, step: int) -> tuple[bytes, Counter[str]]:
    """Units ``start:stop`` rendered ``step`` at a time, stamping progress before each step."""
    counts: Counter[str] = Counter()
    outputs = []
    try:
        # Batch stages (rdns) resolve the whole batch at once; a wait held up
        # by their rate limit still counts as progress.
        work.prefetch(start, stop, counts, state.beat)
        for at in range(start, stop, step):
            state.beat()
            outputs.append(work.render(at, min(at + step, stop), counts, None))
        return b"".join(outputs), counts
    finally:
        state.pipeline.release()


# -- the parent side ----------------------------------------------------------


class _OneShot:
    def __init__(self, config: Config, scratch: str, out_fd: int, progress: Progress | None) -> None:
        self.config = config
        self.scratch = scratch
        self.out_fd = out_fd
        self.progress = progress
        self.counts: Counter[str] = Counter()
        self.bytes_done = 0
        self.files_done = 0
        self.seq = 0
        context = multiprocessing.get_context("forkserver")
        # One stamp for the whole pool, written without a lock (a torn float
        # cannot happen for an aligned 8-byte store): a hung child is found
        # once the others run out of work, at most one timeout later.
        self.stamp = context.RawValue("d", time.monotonic())
        self.pool = ProcessPoolExecutor(
            config.process_count, mp_context=context,
            initializer=_child_init, initargs=(config, scratch, self.stamp),
        )

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)

    def kill(self) -> None:
        """SIGKILL every worker process (a hung stage ignores anything gentler), then reap them."""
        # ProcessPoolExecutor has no public way to stop a busy worker before
        # Python 3.14 (terminate_workers); its _processes map is the only handle.
        processes = list(self.pool._processes.values())
        for child in processes:
            child.kill()
        for child in processes:
            child.join()

    def plain(self, name: str) -> _Plain:
        """The input as a plain regular file: opened, copied off a pipe, decompressed as needed."""
        self.seq += 1
        if name == "-":
            path = self.spill(sys.stdin.buffer.fileno(), "standard input")
        else:
            try:
                fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC)
            except OSError as exc:
                raise InputError(f"{name}: cannot open: {exc.strerror}") from None
            try:
                regular = stat.S_ISREG(os.fstat(fd).st_mode)
                path = os.path.realpath(name) if regular else self.spill(fd, name)
            finally:
                os.close(fd)
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            kind = sniff(os.pread(fd, SNIFF_BYTES, 0))
            if kind is not None:
                path = os.path.join(self.scratch, f"{self.seq}.expanded")
                try:
                    expand(kind, fd, path, limit=self.config.spool.max_decompressed_bytes)
                except CorruptInput as exc:
                    raise InputError(f"{name}: {exc.reason}: {exc.detail}") from None
                except OSError as exc:
                    raise InputError(f"{name}: decompressing: {exc.strerror or exc}") from None
        finally:
            os.close(fd)
        st = os.stat(path)
        return _Plain(name, path, st.st_size, st.st_dev, st.st_ino, self.format_of(name, path, st.st_size))

    def format_of(self, name: str, path: str, size: int) -> Format:
        """The format the daemon would give this input (by its name without a compression suffix)."""
        try:
            with open(path, "rb") as handle:
                head = handle.read(head_size(self.config))
            return select(self.config, decompressed_name(os.path.basename(name)), head, size)
        except InputRejected as exc:
            raise InputError(f"{name}: {exc.reason}: {exc.detail}") from None

    def spill(self, src: int, what: str) -> str:
        """Copy a stream to a scratch file (chunks are byte ranges of a file)."""
        path = os.path.join(self.scratch, f"{self.seq}.input")
        out = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            while data := os.read(src, _COPY):
                write_all(out, data)
        except OSError as exc:
            raise InputError(f"{what}: read error: {exc.strerror}") from None
        finally:
            os.close(out)
        return path

    def run(self, plain: _Plain) -> None:
        """Every chunk of one input through the pool; its records to the output, in order."""
        fd = os.open(plain.path, os.O_RDONLY | os.O_CLOEXEC)
        self.stamp.value = time.monotonic()  # copying or decompressing the input took its own time
        try:
            chunk_bytes = chunk_bytes_for(self.config, plain.size, 0)
            steps = split_chunks(plain.format, fd, plain.size, chunk_bytes, self.config.spool.max_line_bytes,
                                 job=self.seq, path=plain.path, dev=plain.dev, ino=plain.ino)
            chunks = (chunk for chunk in steps if chunk is not None)  # None: "not yet" of a long line
            window: deque[tuple[Chunk, Future[tuple[str, dict[str, int]] | tuple[str, str, str]]]] = deque()
            limit = _IN_FLIGHT_PER_PROCESS * self.config.process_count
            for chunk in chunks:
                window.append((chunk, self.pool.submit(_child_chunk, chunk)))
                while len(window) >= limit:
                    self.collect(plain, *window.popleft())
            while window:
                self.collect(plain, *window.popleft())
        finally:
            os.close(fd)
        self.files_done += 1
        self.show()

    def collect(self, plain: _Plain, chunk: Chunk,
                future: Future[tuple[str, dict[str, int]] | tuple[str, str, str]]) -> None:
        try:
            outcome = self.wait(plain, chunk, future)
        except BrokenProcessPool:
            raise InputError(f"{plain.name}: a worker process died (chunk {chunk.index}, "
                             f"lines from {chunk.first_line})") from None
        if len(outcome) == 3:
            raise InputError(f"{plain.name}: {outcome[1]}: {outcome[2]}")
        part, counts = outcome
        try:
            self.copy_part(part)
        finally:
            os.unlink(part)
        self.counts.update(counts)
        self.bytes_done += chunk.end - chunk.start
        self.stamp.value = max(self.stamp.value, time.monotonic())  # a chunk collected is progress too
        self.show()

    def wait(self, plain: _Plain, chunk: Chunk,
             future: Future[tuple[str, dict[str, int]] | tuple[str, str, str]]
             ) -> tuple[str, dict[str, int]] | tuple[str, str, str]:
        """The chunk's outcome, or Hung once no child has made progress for ``workers.heartbeat_timeout``."""
        limit = self.config.workers.heartbeat_timeout
        while True:
            idle = time.monotonic() - self.stamp.value
            if idle >= limit:
                raise Hung(f"{plain.name}: no progress for {idle:.1f}s (workers.heartbeat_timeout={limit:g}) "
                           f"waiting for chunk {chunk.index}, lines from {chunk.first_line}: a stage is hung; "
                           f"the worker processes were killed")
            try:
                return future.result(timeout=limit - idle)
            except TimeoutError:
                continue

    def copy_part(self, part: str) -> None:
        src = os.open(part, os.O_RDONLY | os.O_CLOEXEC)
        try:
            while data := os.read(src, _COPY):
                write_all(self.out_fd, data)
        finally:
            os.close(src)

    def show(self) -> None:
        if self.progress is not None:
            self.progress.update(self.bytes_done, self.files_done)


def process_files(config: Config, names: list[str], output: str | None, stderr: TextIO | None = None,
                  summary: str | None = None) -> int:
    """``ipspool process``: the records of every input, in order, to ``output`` (None: stdout); with
    ``summary``, the run's summary document to that file once the output is whole."""
    err = stderr or sys.stderr
    refused = _refuse(config, names, output, summary, err)
    if refused is not None:
        return refused
    code, counts = _process(config, names, output, err)
    if code != ExitCode.OK or summary is None:
        return code
    return _write_summary(config, summary, names, counts, err)


def _refuse(config: Config, names: list[str], output: str | None, summary: str | None, err: TextIO) -> int | None:
    """The exit code for a run that must not start (said on ``err``), or None."""
    if names.count("-") > 1:
        print("ipspool: standard input (-) can be named once", file=err)
        return ExitCode.USAGE
    if summary is not None and output is not None and os.path.abspath(summary) == os.path.abspath(output):
        print("ipspool: --summary and --output name the same file", file=err)
        return ExitCode.USAGE
    load_pipeline(config).close()  # a stage that cannot load is a ConfigError, before any work
    missing = [name for name in names if name != "-" and not os.path.exists(name)]
    for name in missing:
        print(f"ipspool: {name}: no such file", file=err)
    return ExitCode.FAILURE if missing else None


def _process(config: Config, names: list[str], output: str | None, err: TextIO) -> tuple[int, Counter[str]]:
    """Every input through the pool to the output: the exit code and the counts of every chunk."""
    scratch = tempfile.mkdtemp(prefix="ipspool-process-")
    target = _Output(output)
    progress = Progress(0, len(names), err, unit="bytes") if err.isatty() else None
    shot = _OneShot(config, scratch, target.fd, progress)
    try:
        for name in names:
            plain = shot.plain(name)
            if progress is not None:
                progress.total_lines += plain.size
            shot.run(plain)
        target.commit()
    except BrokenPipeError:
        # The reader went away (``| head``): nothing more is wanted, and a
        # message would only be noise in a pipeline.
        target.abort()
        return ExitCode.FAILURE, shot.counts
    except InputError as exc:
        target.abort()
        print(f"ipspool: {exc}", file=err)
        return ExitCode.FAILURE, shot.counts
    except Hung as exc:
        shot.kill()
        target.abort()
        print(f"ipspool: {exc}", file=err)
        return ExitCode.TIMED_OUT, shot.counts
    except OSError as exc:
        target.abort()
        print(f"ipspool: writing {output or 'standard output'}: {exc.strerror or exc}", file=err)
        return ExitCode.FAILURE, shot.counts
    finally:
        shot.close()
        if progress is not None:
            progress.close()
        shutil.rmtree(scratch, ignore_errors=True)
    return ExitCode.OK, shot.counts


def _write_summary(config: Config, path: str, names: list[str], counts: Counter[str], err: TextIO) -> int:
    """The daemon's summary document for the run (one for all inputs), under a temporary name, then renamed."""
    # One input: the daemon's job and file name for it (its base name). Several:
    # one summary of them all, counted together and named together.
    name = printable(", ".join(os.path.basename(n) or n for n in names))
    target = _Output(path)
    try:
        write_all(target.fd, render_summary(name, name, counts, config.spool.summary_top))
        target.commit()
    except OSError as exc:
        target.abort()
        print(f"ipspool: writing the summary {path}: {exc.strerror or exc}", file=err)
        return ExitCode.FAILURE
    return ExitCode.OK


class _Output:
    """Standard output, or ``-o FILE`` written to a temporary name beside it and renamed when whole."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self.tmp = ""
        if path is None:
            self.fd = sys.stdout.buffer.fileno()
            return
        directory = os.path.dirname(os.path.abspath(path))
        self.fd, self.tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)

    def commit(self) -> None:
        if self.path is None:
            return
        os.fchmod(self.fd, 0o666 & ~_umask())  # as a shell redirection would create it
        os.fsync(self.fd)
        os.close(self.fd)
        self.fd = -1
        os.rename(self.tmp, self.path)
        self.tmp = ""

    def abort(self) -> None:
        if self.tmp:
            if self.fd >= 0:
                os.close(self.fd)
            os.unlink(self.tmp)
            self.tmp = ""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask

