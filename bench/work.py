"""The per-address work every system does: ipspool's own pipeline functions.

Baselines call these; the daemon calls the same ``process_lines`` in its
workers, so every system does identical work per address and differs only in
how it spreads that work over cores and threads.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from functools import cache
from pathlib import Path

from ipspool.config import parse_config
from ipspool.pipeline import Pipeline, load_pipeline, process_chunk, process_lines

__all__ = ["pipeline_for", "work_file", "work_line", "work_lines"]


def pipeline_for(stages: tuple[str, ...], config: str = "") -> Pipeline:
    """The loaded pipeline, once per process (stages may hold tables, rdns an engine thread).

    ``config`` is JSON of further configuration sections (``{"rdns": {...}}``)
    for stages that need settings. A process forked from one that built the
    pipeline builds its own: the parent's engine thread does not exist in it.
    """
    return _pipeline(stages, config, os.getpid())


@cache
def _pipeline(stages: tuple[str, ...], config: str, _pid: int) -> Pipeline:
    sections = json.loads(config) if config else {}
    return load_pipeline(parse_config({**sections, "pipeline": {"stages": list(stages)}}))


def work_line(stages: tuple[str, ...], item: tuple[int, bytes], config: str = "") -> bytes:
    """One address (numbered line) in, its result record out."""
    line_no, line = item
    return process_lines([line], line_no, pipeline_for(stages, config), Counter())


def work_lines(stages: tuple[str, ...], first_line: int, lines: list[bytes], config: str = "") -> bytes:
    """Consecutive lines numbered from ``first_line``: a batch (prefetched, as the daemon's workers do)."""
    pipeline = pipeline_for(stages, config)
    counts: Counter[str] = Counter()
    pipeline.prefetch(lines, first_line, counts)
    try:
        return process_lines(lines, first_line, pipeline, counts)
    finally:
        pipeline.release()


def work_file(stages: tuple[str, ...], src: Path, dst: Path, config: str = "") -> int:
    """A whole file through the pure heart; its result written to ``dst``; lines out."""
    out, counts = process_chunk(src.read_bytes(), 1, pipeline_for(stages, config))
    dst.write_bytes(out)
    return counts["lines"]
