"""Chunk splitting at its edges: the long-line window, the end of the file, large counts, identity fields."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from itertools import pairwise

import pytest

from ipspool import chunking
from ipspool.chunking import Chunk, count_newlines, split_file, split_steps

CHUNK = 4096
LIMIT = 100  # max_line_bytes


@contextmanager
def opened(data: bytes) -> Iterator[int]:
    with tempfile.TemporaryFile() as handle:
        handle.write(data)
        handle.flush()
        yield handle.fileno()


def spans(data: bytes, chunk_bytes: int = CHUNK, max_line: int = LIMIT) -> list[tuple[int, int, int, bool]]:
    with opened(data) as fd:
        return [(c.start, c.end, c.first_line, c.too_long) for c in split_file(fd, len(data), chunk_bytes, max_line)]


def crossing(tail: int, after: bytes = b"1.2.3.4\n" * 20) -> bytes:
    """Short lines up to the boundary, then a line running ``tail`` bytes past it before its newline."""
    head = b"x" * 9 + b"\n"
    body = head * (CHUNK // len(head))          # 4090 bytes, 409 lines
    start = len(body)
    line = b"y" * (CHUNK - start + tail) + b"\n"  # its newline sits at CHUNK + tail
    return body + line + after


def test_a_line_ending_within_max_line_bytes_past_the_boundary_ends_the_chunk() -> None:
    """The newline at boundary + max_line_bytes is still in the window: an ordinary chunk."""
    data = crossing(LIMIT)
    first = spans(data)[0]
    assert first == (0, CHUNK + LIMIT + 1, 1, False)


def test_a_line_ending_one_byte_later_is_handed_out_alone_as_too_long() -> None:
    """One byte past the window: the chunk closes before the line, which becomes its own chunk."""
    data = crossing(LIMIT + 1)
    assert spans(data)[:2] == [(0, 4090, 1, False), (4090, CHUNK + LIMIT + 2, 410, True)]
    assert spans(data)[2][2] == 411


def test_a_newline_right_at_the_boundary_ends_the_chunk_there() -> None:
    """A line whose newline is the first byte past the nominal end is not over-long."""
    data = crossing(0)
    assert spans(data)[0] == (0, CHUNK + 1, 1, False)


@pytest.mark.parametrize(("extra", "expected"), [
    (LIMIT + 2, [(0, 4090, 1, False), (4090, CHUNK + LIMIT + 2, 410, True)]),
    (LIMIT + 1, [(0, CHUNK + LIMIT + 1, 1, False)]),
    (LIMIT, [(0, CHUNK + LIMIT, 1, False)]),
])
def test_a_last_line_without_newline_near_the_end_is_an_ordinary_chunk(
    extra: int, expected: list[tuple[int, int, int, bool]]
) -> None:
    """Up to max_line_bytes + 1 past the boundary the file's end closes the chunk; further, it is too long."""
    head = b"x" * 9 + b"\n"
    body = head * (CHUNK // len(head))
    data = body + b"y" * (CHUNK - len(body) + extra)
    assert spans(data) == expected


def test_a_long_line_starting_exactly_at_a_chunk_start_leaves_no_empty_chunk() -> None:
    """When the over-long line starts where the chunk does, nothing is yielded before it."""
    data = b"1.2.3.4\n" * 512 + b"z" * 9000 + b"\n1.2.3.4\n"
    result = spans(data)
    assert result[0] == (0, 4096, 1, False)
    assert result[1] == (4096, 13097, 513, True)
    assert all(end > start for start, end, _, _ in result)


def test_first_lines_are_right_when_counting_spans_many_read_blocks() -> None:
    """Newlines are summed over every 1 MiB block, not taken from the last one."""
    data = b"1.2.3.4\n" * (3 * (1 << 20) // 8)
    with opened(data) as fd:
        chunks = list(split_file(fd, len(data), 2 << 20, 4096))
    assert [c.first_line for c in chunks] == [data[:c.start].count(b"\n") + 1 for c in chunks]
    assert chunks[1].first_line > 1 << 17


def test_counting_past_the_end_of_a_file_that_shrank_stops_at_its_end() -> None:
    """count_newlines over a range beyond the file returns what is there."""
    with opened(b"a\nb\nc") as fd:
        assert count_newlines(fd, 0, 100) == (2, 4)
        assert count_newlines(fd, 4, 100) == (0, 4)


def test_chunks_carry_the_file_identity_their_index_and_whether_they_are_the_whole_file() -> None:
    """job, path, dev and ino go with every chunk; indexes count up by one; only a lone chunk is synced."""
    data = b"1.2.3.4\n" * 2000
    with opened(data) as fd:
        chunks = list(split_file(fd, len(data), CHUNK, LIMIT, job=7, path="/a/f", dev=3, ino=4))
        (alone,) = split_file(fd, len(data), len(data), LIMIT, job=8, path="/a/g", dev=5, ino=6)
        (anonymous,) = split_file(fd, 10, CHUNK, LIMIT)
    assert [c.index for c in chunks] == list(range(len(chunks))) and len(chunks) > 2
    assert {(c.job, c.path, c.dev, c.ino, c.sync) for c in chunks} == {(7, "/a/f", 3, 4, False)}
    assert alone == Chunk(8, 0, "/a/g", 0, len(data), 1, False, 5, 6, sync=True)
    assert anonymous == Chunk(0, 0, "", 0, 10, 1, False, 0, 0, sync=True)


def test_a_long_scan_pauses_once_per_scan_step_and_not_at_the_very_end(monkeypatch: pytest.MonkeyPatch) -> None:
    """A line running exactly to the end of the file, k steps long, gives k-1 pauses."""
    monkeypatch.setattr(chunking, "SCAN_STEP", 1024)
    data = b"1.2.3.4\n" * 512 + b"z" * (3 * 1024)  # the long line: 3 steps from the boundary to the end
    with opened(data) as fd:
        steps = list(split_steps(fd, len(data), CHUNK, LIMIT))
    assert [s if s is None else (s.start, s.end, s.too_long) for s in steps] == [
        (0, 4096, False), None, None, (4096, len(data), True)]


def test_a_file_that_shrank_under_the_splitter_still_gives_ordered_tiling_chunks() -> None:
    """Reads short of the announced size end the search; chunks still tile [0, size) in order."""
    data = b"1.2.3.4\n" * 600
    size = len(data) + 5000
    with opened(data) as fd:
        chunks = list(split_file(fd, size, CHUNK, LIMIT))
    assert chunks[0].start == 0 and chunks[-1].end == size
    assert all(a.end == b.start for a, b in pairwise(chunks))
    assert all(c.end > c.start for c in chunks)
