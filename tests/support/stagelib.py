"""User stages for the tests, loaded by workers as "tests.support.stagelib:NAME"."""

from __future__ import annotations

import ipaddress
import os
import threading
import time
from typing import Any

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def tag(address: Address) -> dict[str, Any]:
    """Adds a field derived from the address."""
    return {"tagged": address.version}


def slow(address: Address) -> dict[str, Any]:
    """A blocking lookup stand-in: 20 ms per address."""
    time.sleep(0.02)
    return {"slow": True}


def sleepy(address: Address) -> dict[str, Any]:
    """A quicker blocking stand-in: 5 ms per address (keeps fault tests busy, not long)."""
    time.sleep(0.005)
    return {"sleepy": True}


def boom(address: Address) -> dict[str, Any] | None:
    """Raises for addresses ending in .13."""
    if str(address).endswith(".13"):
        raise ValueError("unlucky address")
    return {"ok": True}


def hang(address: Address) -> None:
    """Never returns for 6.6.6.6."""
    if str(address) == "6.6.6.6":
        time.sleep(3600)


def crash(address: Address) -> None:
    """Kills the worker process for 6.6.6.6."""
    if str(address) == "6.6.6.6":
        os.abort()


def escape(address: Address) -> None:
    """For 6.6.6.6, raises what the per-address handling does not catch (not an Exception): a bug's stand-in."""
    if str(address) == "6.6.6.6":
        raise KeyboardInterrupt("escaped the per-address handling")


def bad_return(address: Address) -> Any:
    """Returns something that is not a mapping."""
    return ["not", "a", "mapping"]


class _Holder:
    def __init__(self) -> None:
        self.lock = threading.Lock()

    def method(self, address: Address) -> None:
        return None


holder = _Holder()  # holder.method cannot be pickled: the instance holds a lock
not_callable = 42


def _make_closure() -> Any:
    def inner(address: Address) -> None:
        return None

    return inner


closure = _make_closure()


class _InlineSlow:
    """A CPU-ish stage that says it does not block: runs inline, 10 ms per address."""

    blocking = False

    def __call__(self, address: Address) -> dict[str, Any]:
        time.sleep(0.01)
        return {"inline_slow": True}


inline_slow = _InlineSlow()
