"""Chunk splitting: every line processed exactly once, in order."""

from __future__ import annotations

import itertools
import os
import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from ipspool.chunking import split_file
from tests.support.lines import physical_lines


def chunks_of(data: bytes, chunk_bytes: int, max_line: int) -> list[tuple[int, int, int, bool]]:
    with tempfile.TemporaryFile() as handle:
        handle.write(data)
        handle.flush()
        fd = handle.fileno()
        return [(c.start, c.end, c.first_line, c.too_long) for c in split_file(fd, len(data), chunk_bytes, max_line)]


def lines_via_chunks(data: bytes, chunk_bytes: int, max_line: int) -> list[tuple[int, bytes]]:
    """(line number, content) as workers would see them; long lines as a marker."""
    seen: list[tuple[int, bytes]] = []
    for start, end, first, too_long in chunks_of(data, chunk_bytes, max_line):
        if too_long:
            seen.append((first, b"<too long>"))
            continue
        for offset, line in enumerate(physical_lines(data[start:end])):
            seen.append((first + offset, line))
    return seen


def lines_written(lines: list[bytes], trailing: bool) -> list[bytes]:
    """The lines a file made of ``lines`` joined by newlines holds, by construction.

    Without a trailing newline, a last empty line leaves no trace in the file.
    """
    return lines if trailing or not lines or lines[-1] else lines[:-1]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"")), max_size=200),
    st.integers(min_value=1, max_value=300),
    st.booleans(),
)
def test_every_line_exactly_once_for_any_chunk_size(lines: list[bytes], chunk: int, trailing: bool) -> None:
    """For any content and chunk size, chunks cover every line once, numbered in order."""
    data = b"\n".join(lines) + (b"\n" if trailing and lines else b"")
    got = lines_via_chunks(data, chunk, max_line=10_000)
    assert got == list(enumerate(lines_written(lines, trailing), 1))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=3000), st.integers(min_value=1, max_value=500), st.integers(min_value=1, max_value=200))
def test_chunks_tile_arbitrary_bytes(data: bytes, chunk: int, max_line: int) -> None:
    """Chunks are contiguous, cover the file, and long lines are isolated, for arbitrary bytes."""
    parts = chunks_of(data, chunk, max_line)
    assert parts[0][0] == 0 and parts[-1][1] == len(data)
    for (s1, e1, *_), (s2, *_rest) in itertools.pairwise(parts):
        assert e1 == s2 and s1 < e1
    got = lines_via_chunks(data, chunk, max_line)
    expected = physical_lines(data)
    assert [n for n, _ in got] == list(range(1, len(expected) + 1))
    for (n, line) in got:
        if line != b"<too long>":
            assert line == expected[n - 1]
        else:
            assert len(expected[n - 1]) > max_line


def test_long_line_crossing_a_boundary_is_its_own_chunk() -> None:
    """A 50 kB line is handed out alone, marked too long, with the right number."""
    data = b"1.1.1.1\n" + b"x" * 50_000 + b"\n2.2.2.2\n"
    parts = chunks_of(data, 4096, 1000)
    long_parts = [p for p in parts if p[3]]
    assert len(long_parts) == 1 and long_parts[0][2] == 2
    assert lines_via_chunks(data, 4096, 1000)[-1] == (3, b"2.2.2.2")


def test_small_file_is_one_chunk_without_reading() -> None:
    """A file no larger than a chunk is one chunk; the splitter never reads it."""
    r, w = os.pipe()
    os.close(w)
    try:
        parts = list(split_file(r, 100, 4096, 100))  # reading a closed pipe would give b""
    finally:
        os.close(r)
    assert [(p.start, p.end, p.first_line) for p in parts] == [(0, 100, 1)]


def test_a_long_line_is_scanned_in_bounded_steps_between_which_the_loop_turns(tmp_path: Path) -> None:
    """A 40 MiB line crossing a boundary: 'not yet' after each SCAN_STEP, same chunks as split_file."""
    from ipspool.chunking import SCAN_STEP, split_steps

    path = tmp_path / "long"
    path.write_bytes(b"1.2.3.4\n" * 1000 + b"x" * (40 << 20) + b"\n5.6.7.8\n")
    size = path.stat().st_size
    fd = os.open(path, os.O_RDONLY)
    try:
        steps = list(split_steps(fd, size, 4096, 4096))
        whole = list(split_file(fd, size, 4096, 4096))
    finally:
        os.close(fd)
    pauses = steps.count(None)
    # The scan starts inside the line, up to one chunk past its start.
    assert (40 << 20) // SCAN_STEP - 1 <= pauses <= (40 << 20) // SCAN_STEP
    assert [c for c in steps if c is not None] == whole
    long_chunk = next(c for c in whole if c.too_long)
    assert long_chunk.end - long_chunk.start == (40 << 20) + 1
