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

Producer subdirectories (incoming/SUB/) get a watch each, not one recursive
watch of incoming/: a producer's tree of directories inside its own must not
cost the daemon an inotify watch per directory. ``follow`` keeps the watches
in step with the subdirectories the last scan read; a directory made in, or
moved into, incoming/ asks the loop for a scan (``SUBDIR``). A name from
incoming/SUB/ comes out as ``SUB/NAME``.
"""

from __future__ import annotations

import importlib
import logging
import os
import queue
import socket
from collections.abc import Mapping
from pathlib import Path

from watchdog.events import (
    DirCreatedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers.api import ObservedWatch
from watchdog.observers.inotify import InotifyObserver

__all__ = ["OVERFLOW", "SUBDIR", "IncomingWatcher"]

OVERFLOW = "\0overflow"  # a queue item that asks the loop for a rescan
SUBDIR = "\0subdir"  # one that asks for a scan: a directory appeared in incoming/
_EVENTS = [FileMovedEvent, FileClosedEvent, DirCreatedEvent, DirMovedEvent]


class _Handler(FileSystemEventHandler):
    def __init__(self, incoming: str, names: queue.SimpleQueue[str], wake: socket.socket) -> None:
        self.incoming = incoming
        self.names = names
        self.wake = wake

    def _offer(self, path: str | bytes) -> None:
        path = os.fsdecode(path)
        parent, name = os.path.split(path)
        if not name or name.startswith("."):
            return
        if parent != self.incoming:
            above, sub = os.path.split(parent)
            if above != self.incoming:
                return
            name = f"{sub}/{name}"
        self.names.put(name)
        self.poke()

    def _new_directory(self, path: str | bytes) -> None:
        if os.path.dirname(os.fsdecode(path)) == self.incoming:
            self.names.put(SUBDIR)
            self.poke()

    def poke(self) -> None:
        try:
            self.wake.send(b"w")
        except (BlockingIOError, OSError):
            pass  # the loop has wake-ups pending already, or is gone

    def on_moved(self, event: FileSystemEvent) -> None:
        if isinstance(event, FileMovedEvent) and not event.is_directory:
            self._offer(event.dest_path)
        elif isinstance(event, DirMovedEvent):
            self._new_directory(event.dest_path)

    def on_created(self, event: FileSystemEvent) -> None:
        if isinstance(event, DirCreatedEvent):
            self._new_directory(event.src_path)

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
        self._subdirs: dict[str, tuple[ObservedWatch, object]] = {}  # name -> (watch, identity)

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
        observer.schedule(self._handler, self.incoming, recursive=False, event_filter=_EVENTS)
        observer.daemon = True
        observer.start()
        self._observer = observer

    def follow(self, subdirs: Mapping[str, object]) -> list[str]:
        """Watch exactly these subdirectories of incoming/ (name -> identity: its device and inode);
        return the ones that could not be watched.

        A subdirectory replaced by another of the same name (a new identity)
        gets a new watch: inotify watches the directory, not its name. One
        that cannot be watched (the inotify limits:
        fs.inotify.max_user_instances, max_user_watches) is still read by
        every rescan.
        """
        if self._observer is None:
            return []
        for sub in [s for s, (_, ident) in self._subdirs.items() if subdirs.get(s) != ident]:
            try:
                self._observer.unschedule(self._subdirs.pop(sub)[0])
            except (KeyError, OSError):
                pass  # its emitter ended when the directory went
        failed = []
        for sub in sorted(subdirs.keys() - self._subdirs.keys()):
            try:
                watch = self._observer.schedule(self._handler, os.path.join(self.incoming, sub), recursive=False,
                                                event_filter=[FileMovedEvent, FileClosedEvent])
            except OSError:
                failed.append(sub)
            else:
                self._subdirs[sub] = (watch, subdirs[sub])
        return failed

    @property
    def watched(self) -> list[str]:
        return sorted(self._subdirs)

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
            self._subdirs.clear()
        logging.getLogger("watchdog.observers.inotify_c").removeHandler(self._spotter)

    def simulate_overflow(self) -> None:
        """Behave as after IN_Q_OVERFLOW (used by tests and by SIGUSR2)."""
        self._handler.names.put(OVERFLOW)
        self._handler.poke()
