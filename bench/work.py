"""The per-address work every system does: ipspool's own pipeline functions.

Baselines call these; the daemon calls the same ``process_lines`` in its
workers, so every system does identical work per address and differs only in
how it spreads that work over cores and threads.
"""

from __future__ import annotations

from collections import Counter
from functools import cache
from pathlib import Path

from ipspool.config import parse_config
from ipspool.pipeline import Pipeline, load_pipeline, process_chunk, process_lines

__all__ = ["pipeline_for", "work_file", "work_line", "work_lines"]


@cache
def pipeline_for(stages: tuple[str, ...]) -> Pipeline:
    """The loaded pipeline, once per process (stages may hold tables)."""
    return load_pipeline(parse_config({"pipeline": {"stages": list(stages)}}))


def work_line(stages: tuple[str, ...], item: tuple[int, bytes]) -> bytes:
    """One address (numbered line) in, its result record out."""
    line_no, line = item
    return process_lines([line], line_no, pipeline_for(stages), Counter())


def work_lines(stages: tuple[str, ...], first_line: int, lines: list[bytes]) -> bytes:
    """Consecutive lines numbered from ``first_line``: a batch."""
    return process_lines(lines, first_line, pipeline_for(stages), Counter())


def work_file(stages: tuple[str, ...], src: Path, dst: Path) -> int:
    """A whole file through the pure heart; its result written to ``dst``; lines out."""
    out, counts = process_chunk(src.read_bytes(), 1, pipeline_for(stages))
    dst.write_bytes(out)
    return counts["lines"]
