"""Progress for ``submit --wait``: a bar on a terminal, plain lines otherwise."""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["Progress"]


class Progress:
    """Lines done out of lines submitted, for a set of files.

    A producer sees a file's result only once it is whole, so lines count
    per finished file: the bar moves file by file, weighted by their lines.
    """

    def __init__(self, total_lines: int, total_files: int, stream: TextIO | None = None,
                 every: float = 1.0, unit: str = "lines") -> None:
        self.total_lines = total_lines
        self.total_files = total_files
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.every = every
        self.unit = unit  # what total_lines counts (``ipspool process`` counts bytes)
        self.done: tuple[int, int] = (-1, -1)
        self._last = 0.0

    def update(self, lines: int, files: int) -> None:
        now = time.monotonic()
        if (lines, files) == self.done and (not self.tty or now - self._last < self.every):
            return
        self.done, self._last = (lines, files), now
        counts = f"{lines}/{self.total_lines} {self.unit}, {files}/{self.total_files} files"
        if self.tty:
            width = 30
            filled = width * lines // max(1, self.total_lines) if self.total_lines else width * files // max(
                1, self.total_files)
            self.stream.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {counts}")
        else:
            self.stream.write(f"progress: {counts} done\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()
