"""A stage module that imports in the supervisor but raises in a worker.

It models a stage whose dependencies exist where the configuration is checked
but not where the work runs (a missing library in the worker's environment):
workers cannot start, and the daemon must halt instead of fork-looping.
"""

from __future__ import annotations

from typing import Any

from setproctitle import getproctitle

if getproctitle().startswith("ipspool: worker"):
    raise RuntimeError("this stage cannot be loaded in a worker process")


def stage(address: Any) -> None:
    return None
