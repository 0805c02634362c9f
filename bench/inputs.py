"""Deterministic benchmark inputs: the same seed gives the same bytes.

Lines are a mix of random IPv4 and IPv6 (with a share of special-purpose
blocks), a few percent invalid lines, comments and blank lines.
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Callable
from pathlib import Path

__all__ = ["make_lines", "records_expected", "write_file", "write_files"]

SEED = 20240505
INVALID = ("010.1.1.1", "1.2.3", "hello", "1.2.3.256", "::1::", "10.0.0.0/8", "fe80::1%%")


def v4(rng: random.Random) -> str:
    return str(ipaddress.IPv4Address(rng.getrandbits(32)))


def v4_special(rng: random.Random) -> str:
    base = rng.choice((10 << 24, 192 << 24 | 168 << 16, 100 << 24 | 64 << 16, 127 << 24))
    return str(ipaddress.IPv4Address(base | rng.getrandbits(16)))


def v6_global(rng: random.Random) -> str:
    return str(ipaddress.IPv6Address(1 << 125 | rng.getrandbits(125)))


def v6_special(rng: random.Random) -> str:
    prefix = rng.choice((0xFE80 << 112, 0xFD00 << 112, 0xFF02 << 112))
    return str(ipaddress.IPv6Address(prefix | rng.getrandbits(64)))


def _commented(rng: random.Random) -> str:
    return f"{v4(rng)}  # seen {rng.getrandbits(8)} times"


# (cumulative share, how to make the line)
MIX: tuple[tuple[float, Callable[[random.Random], str]], ...] = (
    (0.55, v4),
    (0.65, v4_special),
    (0.85, v6_global),
    (0.90, v6_special),
    (0.93, lambda rng: rng.choice(INVALID)),                       # 3% invalid
    (0.95, lambda rng: f"# export batch {rng.getrandbits(16)}"),   # 2% comments
    (0.97, lambda rng: ""),                                        # 2% blank
    (1.00, _commented),                                            # 3% address + comment
)


def _line(rng: random.Random) -> str:
    roll = rng.random()
    return next(make for share, make in MIX if roll < share)(rng)


def records_expected(lines: list[str]) -> int:
    """Result records for these lines: one per line that is not blank or only a comment."""
    return sum(1 for line in lines if line.split("#", 1)[0].strip())


def make_lines(count: int, seed: int = SEED) -> list[str]:
    """``count`` input lines from ``seed``; the first N lines never depend on ``count``."""
    rng = random.Random(seed)
    return [_line(rng) for _ in range(count)]


def write_file(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


def write_files(directory: Path, count: int, lines_each: int, seed: int = SEED) -> list[Path]:
    """``count`` files of ``lines_each`` lines, named so they sort in order."""
    directory.mkdir(parents=True, exist_ok=True)
    lines = make_lines(count * lines_each, seed)
    return [write_file(directory / f"small-{i:05d}.txt", lines[i * lines_each:(i + 1) * lines_each])
            for i in range(count)]
