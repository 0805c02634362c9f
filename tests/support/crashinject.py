"""Test-only failure injection: a bug where no stage can reach (tests/e2e/test_crashes.py).

``IPSPOOL_TEST_INJECT=WHERE python -m tests.support.crashinject ARGS...`` runs
``ipspool ARGS...`` with one function of the daemon replaced by one that
raises ``Injected``, once (``IPSPOOL_TEST_INJECT_MARK`` names the file whose
creation records that it fired). WHERE is:

    loop           the supervisor's main loop (its tick, once the daemon is ready)
    thread         a thread of the supervisor started once the daemon is ready
    worker         a worker's main thread, as it takes a chunk of a file named crash*
    worker-thread  a thread of a worker, started as it takes such a chunk
    stats          the stats Manager's status writer thread
    command        a one-shot command (``ipspool status`` reading the snapshot)

Stage errors would not do: they become error records. Workers and the
Manager are forked by the forkserver, which imports ipspool afresh, so for
those this module is preloaded into the forkserver and replaces the function
there, on import.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable
from typing import Any

ENV = "IPSPOOL_TEST_INJECT"
MARK_ENV = "IPSPOOL_TEST_INJECT_MARK"
_FORKED = ("worker", "worker-thread", "stats")


class Injected(RuntimeError):
    """The failure a test put there."""


def _fire() -> bool:
    """True the first time in the whole process tree (O_EXCL on the mark file)."""
    try:
        os.close(os.open(os.environ[MARK_ENV], os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError:
        return False
    return True


def _raise() -> None:
    raise Injected(f"injected failure ({os.environ[ENV]})")


def _in_thread() -> None:
    threading.Thread(target=_raise, name="injected", daemon=True).start()


def _wrap(cls: type, name: str, before: Callable[[Any, tuple[Any, ...]], None]) -> None:
    original = getattr(cls, name)

    def replaced(self: Any, *args: Any) -> Any:
        before(self, args)
        return original(self, *args)

    setattr(cls, name, replaced)


def _patch_supervisor(where: str) -> None:
    from ipspool.supervisor import Supervisor

    def loop(sup: Any, _args: tuple[Any, ...]) -> None:
        if sup.ready_sent and _fire():
            _raise()

    def thread(sup: Any, _args: tuple[Any, ...]) -> None:
        if sup.ready_sent and _fire():
            _in_thread()

    _wrap(Supervisor, "tick", loop if where == "loop" else thread)


def _patch_forked(where: str) -> None:
    if where == "stats":
        from ipspool.stats import SnapshotWriter

        _wrap(SnapshotWriter, "write_once", lambda _w, _a: _raise() if _fire() else None)
        return
    from ipspool.worker import Worker

    def take(_worker: Any, args: tuple[Any, ...]) -> None:
        if os.path.basename(args[0].path).startswith("crash") and _fire():
            _in_thread() if where == "worker-thread" else _raise()

    _wrap(Worker, "start", take)


def _preload_me() -> None:
    """Add this module to the forkserver's preload list, whoever sets it."""
    from multiprocessing.context import BaseContext

    original = BaseContext.set_forkserver_preload

    def preload(self: BaseContext, module_names: list[str]) -> None:
        original(self, [*module_names, __spec__.name if __spec__ else "tests.support.crashinject"])

    BaseContext.set_forkserver_preload = preload  # type: ignore[method-assign]


def main(argv: list[str]) -> int:
    where = os.environ[ENV]
    if where in ("loop", "thread"):
        _patch_supervisor(where)
    elif where == "command":
        import ipspool.cli

        ipspool.cli._snapshot = lambda *_a, **_k: _raise()  # type: ignore[assignment,return-value]
    else:
        _preload_me()
    from ipspool.cli import main as ipspool_main

    return ipspool_main(argv)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
if os.environ.get(ENV) in _FORKED and __name__ != "__main__":
    _patch_forked(os.environ[ENV])  # imported by the forkserver (preload): its children inherit the change
