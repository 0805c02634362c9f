"""One compressed input being decompressed into the spool, off the loop.

The job book starts an ``Expansion`` for a claimed input whose first bytes
say gzip, bzip2, xz or zstd (``compression.sniff``). The decompression runs
on the book's single helper thread (bounded: one file at a time, one piece
of output in memory) and writes ``results/.parts/RUN/SEQ.expanded``, which is
fsync'd before it is split; the loop only looks at the outcome when the
thread has woken it. The copy lives in this run's parts folder, so whatever
interrupts it (a stop, a crash, a power cut) leaves the input claimed in
active/ and a partial copy that the next start's recovery removes with the
other parts; the input is then decompressed again from the start.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from ipspool.compression import expand

__all__ = ["Expansion"]


@dataclass
class Expansion:
    kind: str
    src_fd: int            # the claimed input, open; closed once the copy is whole
    path: str              # the plain copy in this run's parts folder
    limit: int             # spool.max_decompressed_bytes
    keep_free: int         # alerts.disk_low_bytes
    waiting: int           # files waiting when it was claimed (chunk_bytes_for)
    started: float = 0.0
    size: int = -1         # bytes of the plain copy, once it is whole
    retry_at: float = 0.0  # after NoRoom: when to try again
    future: Future[int] | None = field(default=None, repr=False)

    def start(self, runner: ThreadPoolExecutor, abandon: threading.Event, wake: Callable[[], None] | None,
              now: float) -> None:
        self.started = now
        self.future = runner.submit(expand, self.kind, self.src_fd, self.path, limit=self.limit,
                                    keep_free=self.keep_free, abandon=abandon)
        if wake is not None:
            self.future.add_done_callback(lambda _done: wake())

    @property
    def running(self) -> bool:
        return self.future is not None and not self.future.done()

    def outcome(self) -> int:
        """The copy's size; raises what ``compression.expand`` raised."""
        assert self.future is not None and self.future.done()
        future, self.future = self.future, None
        self.size = future.result()
        return self.size

    def close_source(self) -> None:
        if self.src_fd >= 0:
            os.close(self.src_fd)
            self.src_fd = -1
