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
(``BrokenProcessPool``) instead of leaving a join waiting.

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
from collections import Counter, deque
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import TextIO

from ipspool.chunking import Chunk, chunk_bytes_for
from ipspool.compression import SNIFF_BYTES, CorruptInput, decompressed_name, expand, sniff
from ipspool.config import Config
from ipspool.exitcodes import ExitCode
from ipspool.formats import Format, Work, chunk_work, head_size, select, split_chunks
from ipspool.formats.work import too_long_output
from ipspool.fsops import write_all
from ipspool.parts import ChunkFailed, PartWriter, read_chunk, write_part
from ipspool.pipeline import Pipeline, load_pipeline
from ipspool.progress import Progress
from ipspool.spool import InputRejected

__all__ = ["InputError", "process_files"]

_COPY = 1 << 20
_IN_FLIGHT_PER_PROCESS = 2


class InputError(Exception):
    """An input cannot be processed: the message names it and says why."""


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


# One per worker process, set by its initializer: a ProcessPoolExecutor task
# reaches per-process state only through the module.
_CHILD: _ChildState | None = None


def _child_init(config: Config, scratch: str) -> None:
    import signal

    global _CHILD  # noqa: PLW0603 - see _CHILD
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    pipeline = load_pipeline(config)
    threads = ThreadPoolExecutor(config.workers.threads, thread_name_prefix="stage") if pipeline.blocking else None
    _CHILD = _ChildState(config, pipeline, scratch, threads)


def _child_chunk(chunk: Chunk) -> tuple[str, dict[str, int]] | tuple[str, str, str]:
    """One chunk into a part file: ("ok"-less) (part, counts), or ("failed", reason, detail)."""
    state = _CHILD
    assert state is not None
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
        yield _render(state.pipeline, work, 0, units)
        return
    size = max(1, -(-units // state.config.workers.threads))
    futures = [state.threads.submit(_render, state.pipeline, work, at, min(at + size, units))
               for at in range(0, units, size)]
    for future in futures:
        yield future.result()


def _render(pipeline: Pipeline, work: Work, start: int, stop: int) -> tuple[bytes, Counter[str]]:
    counts: Counter[str] = Counter()
    try:
        work.prefetch(start, stop, counts)  # batch stages (rdns) resolve the whole batch at once
        return work.render(start, stop, counts, None), counts
    finally:
        pipeline.release()


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
        self.pool = ProcessPoolExecutor(
            config.process_count, mp_context=multiprocessing.get_context("forkserver"),
            initializer=_child_init, initargs=(config, scratch),
        )

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)

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
            outcome = future.result()
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
        self.show()

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


def process_files(config: Config, names: list[str], output: str | None, stderr: TextIO | None = None) -> int:
    """``ipspool process``: the records of every input, in order, to ``output`` (None: stdout)."""
    err = stderr or sys.stderr
    if names.count("-") > 1:
        print("ipspool: standard input (-) can be named once", file=err)
        return ExitCode.USAGE
    load_pipeline(config).close()  # a stage that cannot load is a ConfigError, before any work
    missing = [name for name in names if name != "-" and not os.path.exists(name)]
    if missing:
        for name in missing:
            print(f"ipspool: {name}: no such file", file=err)
        return ExitCode.FAILURE
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
        return ExitCode.FAILURE
    except InputError as exc:
        target.abort()
        print(f"ipspool: {exc}", file=err)
        return ExitCode.FAILURE
    except OSError as exc:
        target.abort()
        print(f"ipspool: writing {output or 'standard output'}: {exc.strerror or exc}", file=err)
        return ExitCode.FAILURE
    finally:
        shot.close()
        if progress is not None:
            progress.close()
        shutil.rmtree(scratch, ignore_errors=True)
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

