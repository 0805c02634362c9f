"""Unit tests start from structlog's defaults.

A test that applies a configuration (``Supervisor.apply``, ``cli.main``)
installs an info-level filter for the rest of the process; without a reset,
``capture_logs`` in a later test would miss debug events depending on the order
tests happen to run in.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import structlog


@pytest.fixture(autouse=True)
def _default_logging() -> Iterator[None]:
    structlog.reset_defaults()
    yield
    structlog.reset_defaults()
