"""One chunk's work in any format, cut into batches the worker can spread.

``chunk_work`` turns a chunk's bytes into a ``Work``: a number of units and
a way to render any run of them into result bytes. The worker's inline and
pooled paths batch a ``Work`` the same way whatever the format; plain files
with JSON-lines output get ``PlainWork``, which is today's ``process_lines``
over today's lines, unchanged. ``process_chunk`` is the pure heart for any
format (the Dask task and any one-shot runner call it).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Protocol

import orjson

from ipspool.chunking import Chunk
from ipspool.fastip import ParsedAddress
from ipspool.formats import delimited
from ipspool.formats.output import Output
from ipspool.formats.readers import reader_for
from ipspool.formats.records import INPUT_PREVIEW, error_fields, parse_text
from ipspool.formats.spec import Format
from ipspool.parts import too_long_record
from ipspool.pipeline import Pipeline, process_lines, split_lines
from ipspool.protocol import Alert

__all__ = ["INLINE_BATCH", "PROGRESS_STEP", "FormatWork", "PlainWork", "Work", "chunk_work", "process_chunk",
           "too_long_output"]

# How often work on a chunk says it is alive (a daemon worker's heartbeat, ``ipspool process``'s stamp):
INLINE_BATCH = 2048  # lines rendered on the process's own thread between two marks
PROGRESS_STEP = 8    # lines a stage thread renders between two marks

Counts = Counter[str]


class Work(Protocol):
    header: bytes  # written before any record (a CSV header row, in the file's first chunk)

    def __len__(self) -> int: ...
    def render(self, at: int, stop: int, counts: Counts, alerts: list[Alert] | None) -> bytes: ...
    def prefetch(self, at: int, stop: int, counts: Counts, beat: Callable[[], None] | None = None) -> None: ...


class PlainWork:
    """Plain lines as JSON lines: the fast path."""

    header = b""

    def __init__(self, data: bytes, first_line: int, pipeline: Pipeline) -> None:
        self.lines = split_lines(data)
        self.first_line = first_line
        self.pipeline = pipeline

    def __len__(self) -> int:
        return len(self.lines)

    def render(self, at: int, stop: int, counts: Counts, alerts: list[Alert] | None) -> bytes:
        return process_lines(self.lines[at:stop], self.first_line + at, self.pipeline, counts, alerts)

    def prefetch(self, at: int, stop: int, counts: Counts, beat: Callable[[], None] | None = None) -> None:
        self.pipeline.prefetch(self.lines[at:stop], self.first_line + at, counts, beat)


class FormatWork:
    """Any other format or output: a reader's units, its records, serialized."""

    def __init__(self, fmt: Format, data: bytes, first_line: int, pipeline: Pipeline, first_chunk: bool) -> None:
        self.reader = reader_for(fmt)
        self.units = self.reader.units(data, first_line)
        self.pipeline = pipeline
        self.output = Output(fmt, pipeline.names)
        self.header = self.output.header() if first_chunk else b""

    def __len__(self) -> int:
        return len(self.units)

    def render(self, at: int, stop: int, counts: Counts, alerts: list[Alert] | None) -> bytes:
        batch = getattr(self.reader, "batch", None)
        if batch is not None:
            return self.output.write(batch(self.units[at:stop], self.pipeline, counts, alerts))
        records = []
        for unit in self.units[at:stop]:
            records += self.reader.records(unit, self.pipeline, counts, alerts)
        return self.output.write(records)

    def prefetch(self, at: int, stop: int, counts: Counts, beat: Callable[[], None] | None = None) -> None:
        if not self.pipeline.prefetches:
            return
        found: list[ParsedAddress] = []
        for unit in self.units[at:stop]:
            for text in self.reader.addresses(unit):
                verdict = parse_text(text)
                if not isinstance(verdict, str):
                    found.append(verdict)
        self.pipeline.prefetch_parsed(found, counts, beat)


def chunk_work(fmt: Format | None, data: bytes, first_line: int, pipeline: Pipeline, first_chunk: bool) -> Work:
    """The work of one chunk's bytes (``fmt`` None: plain lines, JSON lines out)."""
    if fmt is None or fmt.is_default:
        return PlainWork(data, first_line, pipeline)
    return FormatWork(fmt, data, first_line, pipeline, first_chunk)


def process_chunk(data: bytes, first_line: int, pipeline: Pipeline, alerts: list[Alert] | None = None,
                  fmt: Format | None = None, first_chunk: bool = True) -> tuple[bytes, Counts]:
    """The pure heart for any format: one chunk's bytes in, its result bytes and counts out."""
    counts: Counts = Counter()
    work = chunk_work(fmt, data, first_line, pipeline, first_chunk)
    work.prefetch(0, len(work), counts)
    try:
        return work.header + work.render(0, len(work), counts, alerts), counts
    finally:
        pipeline.release()


def too_long_output(chunk: Chunk, limit: int, stage_names: tuple[str, ...]) -> tuple[bytes, Counts]:
    """The result of a chunk that is one over-long line or record, in its file's output format."""
    fmt = chunk.format
    if fmt is not None and fmt.kind == "delimited":
        # The record DelimitedReader makes of it inside a chunk, so that where
        # the chunk boundaries fall changes nothing.
        lines, head = delimited.cut_record(chunk.path, chunk.start, chunk.end, limit, INPUT_PREVIEW)
        counts: Counts = Counter({"lines": lines, "invalid": 1, "error.line_too_long": 1})
        record = error_fields({"line": chunk.first_line}, head.decode("utf-8", "backslashreplace"),
                              delimited.too_long_error(limit))
        output = Output(fmt, stage_names)
        return (output.header() if chunk.index == 0 else b"") + output.write([record]), counts
    data, counts = too_long_record(chunk, limit)
    if fmt is not None and fmt.output == "csv":
        output = Output(fmt, stage_names)
        data = (output.header() if chunk.index == 0 else b"") + output.write([orjson.loads(data)])
    return data, counts
