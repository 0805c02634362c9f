"""Progress for ``submit --wait``: a bar on a terminal, plain lines otherwise."""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["Progress"]


class Progress:
    def __init__(self, total: int, stream: TextIO | None = None, every: float = 1.0) -> None:
        self.total = total
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.every = every
        self.done = -1
        self._last = 0.0

    def update(self, done: int) -> None:
        now = time.monotonic()
        if done == self.done and now - self._last < self.every:
            return
        if not self.tty and done == self.done:
            return
        self.done, self._last = done, now
        if self.tty:
            width = 30
            filled = width * done // max(1, self.total)
            self.stream.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{self.total} files")
        else:
            self.stream.write(f"progress: {done}/{self.total} files done\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()
