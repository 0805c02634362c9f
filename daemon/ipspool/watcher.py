"""Watching incoming/ with watchdog: names in, nothing else.

The observer runs on its own thread, so it does no work here: it puts the
name of a file that became complete on a queue and wakes the supervisor loop
through a socket. The loop de-duplicates, claims and dispatches.

Which events mean "complete":
- moved into incoming/ (the protocol: write in tmp/, rename in), also from
  an unwatched directory;
- closed after writing (a producer that wrote into incoming/ directly;
  reacting to "created" instead would read a file still being written).
Anything else (a hard link, a FIFO or symlink made in place) is found by the
periodic rescan, which also covers events inotify dropped. A queue overflow
(IN_Q_OVERFLOW) triggers an immediate rescan.
"""

from __future__ import annotations

import importlib
import logging
import os
import queue
import socket
from pathlib import Path

from watchdog.events import (
    FileClosedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers.inotify import InotifyObserver

__all__ = ["OVERFLOW", "IncomingWatcher"]

OVERFLOW = "\0overflow"  # a queue item that asks the loop for a rescan


class _Handler(FileSystemEventHandler):
    def __init__(self, incoming: str, names: queue.SimpleQueue[str], wake: socket.socket) -> None:
        self.incoming = incoming
        self.names = names
        self.wake = wake

    def _offer(self, path: str | bytes) -> None:
        path = os.fsdecode(path)
        parent, name = os.path.split(path)
        if parent != self.incoming or not name or name.startswith("."):
            return
        self.names.put(name)
        self.poke()

    def poke(self) -> None:
        try:
            self.wake.send(b"w")
        except (BlockingIOError, OSError):
            pass  # the loop has wake-ups pending already, or is gone

    def on_moved(self, event: FileSystemEvent) -> None:
        if isinstance(event, FileMovedEvent) and not event.is_directory:
            self._offer(event.dest_path)

    def on_closed(self, event: FileSystemEvent) -> None:
        if isinstance(event, FileClosedEvent) and not event.is_directory:
            self._offer(event.src_path)


class _OverflowSpotter(logging.Handler):
    """watchdog (7.x) reports IN_Q_OVERFLOW only as a log warning from
    watchdog.observers.inotify_c ("Inotify queue overflowed; filesystem events
    were lost") and tells event handlers nothing, so listen for that record."""

    def __init__(self, handler: _Handler) -> None:
        super().__init__(logging.WARNING)
        self.handler = handler

    def emit(self, record: logging.LogRecord) -> None:
        if "overflow" in record.getMessage().lower():
            self.handler.names.put(OVERFLOW)
            self.handler.poke()


def _no_move_pairing_delay() -> None:
    """Stop watchdog holding back events behind every rename out of incoming/.

    watchdog keeps each IN_MOVED_FROM for 0.5 s to pair it with its
    IN_MOVED_TO, in a FIFO queue: every claim (a rename out of incoming/)
    stalled the next file's event by up to half a second (watchdog issues
    #390 and #649; issue 5 measured a 450 ms median pick-up for a lone file).
    Moves out of incoming/ mean nothing here, and a move into it is reported
    paired or not, so the pairing delay buys nothing. It is a class attribute
    read when the observer starts; this process runs no other observer.
    """
    for module, name in (
        ("watchdog.observers.inotify_move_event_grouper", "InotifyMoveEventGrouper"),  # watchdog >= 6
        ("watchdog.observers.inotify_buffer", "InotifyBuffer"),  # watchdog 4 and 5
    ):
        try:
            holder = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            continue
        holder.delay = 0.0
        return


class IncomingWatcher:
    def __init__(self, incoming: Path) -> None:
        self.incoming = str(incoming)
        self.names: queue.SimpleQueue[str] = queue.SimpleQueue()
        self.wake_r, wake_w = socket.socketpair()
        self.wake_r.setblocking(False)
        wake_w.setblocking(False)
        self._handler = _Handler(self.incoming, self.names, wake_w)
        self._spotter = _OverflowSpotter(self._handler)
        self._observer: InotifyObserver | None = None

    def start(self) -> None:
        _no_move_pairing_delay()
        library_log = logging.getLogger("watchdog")
        library_log.propagate = False  # its records are not JSON; only overflow matters
        library_log.addHandler(logging.NullHandler())
        logging.getLogger("watchdog.observers.inotify_c").addHandler(self._spotter)
        # Full events: a rename into incoming/ from a directory we do not
        # watch (tmp/) is a move with an empty source, not a "created" that
        # would look the same as a file opened for writing in place.
        observer = InotifyObserver(generate_full_events=True)
        observer.schedule(
            self._handler, self.incoming, recursive=False,
            event_filter=[FileMovedEvent, FileClosedEvent],
        )
        observer.daemon = True
        observer.start()
        self._observer = observer

    def drain(self) -> list[str]:
        """Names reported since the last call (the wake-up bytes are eaten too)."""
        try:
            while self.wake_r.recv(4096):
                pass
        except BlockingIOError:
            pass
        names = []
        while True:
            try:
                names.append(self.names.get_nowait())
            except queue.Empty:
                return names

    def stop(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)
            self._observer = None
        logging.getLogger("watchdog.observers.inotify_c").removeHandler(self._spotter)

    def simulate_overflow(self) -> None:
        """Behave as after IN_Q_OVERFLOW (used by tests and by SIGUSR2)."""
        self._handler.names.put(OVERFLOW)
        self._handler.poke()
