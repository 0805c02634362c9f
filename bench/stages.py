"""User stages for the benchmark, loaded by the daemon as ``bench.stages:NAME``.

Each is a module-level instance, so it pickles by reference and carries the
``blocking`` flag the pipeline reads (docs/stages.md): the CPU-bound stage runs
inline in the workers, the sleeping one on their thread pools.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

__all__ = ["CPU_ROUNDS", "cpu_1ms", "noop", "sleep_10ms"]

# Rounds of the loop below that take about 1 ms on the reference machine
# (Xeon, Python 3.11). Fixed rather than calibrated, so every system does
# exactly the same work and a faster machine simply shows higher figures.
CPU_ROUNDS = 10000


class _CpuBound:
    """About 1 ms of pure-Python arithmetic per address (holds the GIL throughout)."""

    blocking = False

    def __call__(self, address: Any, /) -> Mapping[str, Any]:
        acc = int(address) & 0xFFFF
        for i in range(CPU_ROUNDS):
            acc = (acc * 31 + i) & 0xFFFFFFFF
        return {"cpu": acc}


class _Sleep:
    """A 10 ms blocking call per address: a stand-in for a slow lookup."""

    blocking = True

    def __call__(self, address: Any, /) -> Mapping[str, Any]:
        time.sleep(0.010)
        return {"slept": True}


class _Noop:
    """Adds nothing: what is left is the framework's own cost per address."""

    blocking = False

    def __call__(self, address: Any, /) -> None:
        return None


cpu_1ms = _CpuBound()
sleep_10ms = _Sleep()
noop = _Noop()
