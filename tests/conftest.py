"""Shared fixtures (a real ``ipspool run`` process on a temporary spool) and the skip policy.

Skip policy: a test may skip where the machine lacks what it needs (root, a
tool, a kernel feature), and says which with its reason. With
``IPSPOOL_NO_SKIP=1`` (``.ci/run`` sets it: CI runs as root and installs
everything) every skip is turned into a failure, unless its reason starts
with an entry of ``SKIP_ALLOWLIST``. Each run ends with the skips grouped by
reason, so a skip is never silent.
"""

from __future__ import annotations

import os
import tempfile
from collections import Counter
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from ipspool.configfiles import CONFIG_ENV, SYSTEM_DIR_ENV
from tests.support.daemon import Daemon

NO_SKIP = "IPSPOOL_NO_SKIP"

# Reasons (prefixes) that stay skips even under IPSPOOL_NO_SKIP=1, each with
# why CI cannot (or need not) remove it, as "reason prefix": "justification".
# Empty: .ci/run installs everything, so on CI every test runs.
SKIP_ALLOWLIST: dict[str, str] = {}


def pytest_configure(config: pytest.Config) -> None:
    """No test (nor any ipspool it starts) reads this machine's /etc/ipspool or an operator's $IPSPOOL_CONFIG.

    The discovery rule's system directory points at a name that is never
    created; a test that wants a "system" configuration sets its own.
    """
    os.environ.pop(CONFIG_ENV, None)
    os.environ[SYSTEM_DIR_ENV] = os.path.join(tempfile.gettempdir(), f"ipspool-tests-{os.getpid()}-no-etc")


def no_skip() -> bool:
    """True when skips must fail (IPSPOOL_NO_SKIP=1)."""
    return os.environ.get(NO_SKIP) == "1"


def _skip_reason(report: pytest.TestReport | pytest.CollectReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


def _allowed(reason: str) -> bool:
    return any(reason.startswith(prefix) for prefix in SKIP_ALLOWLIST)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    """Under IPSPOOL_NO_SKIP=1, a skip whose reason is not allowlisted is a failure."""
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    if not report.skipped or hasattr(report, "wasxfail") or not no_skip():
        return
    reason = _skip_reason(report)
    if _allowed(reason):
        return
    report.outcome = "failed"
    report.longrepr = f"{NO_SKIP}=1 but this test skipped: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Generator[None, Any, None]:
    """The same for a whole module skipped at collection (``pytest.importorskip`` and the like)."""
    outcome = yield
    report: pytest.CollectReport = outcome.get_result()
    if report.skipped and no_skip() and not _allowed(reason := _skip_reason(report)):
        report.outcome = "failed"
        report.longrepr = f"{NO_SKIP}=1 but this module skipped: {reason}"


# The one command that gives a run everything it needs: as root, `make test`
# installs the system packages of .ci/packages before pytest (Makefile).
ENABLE_ALL = "sudo make test"


def _group(nodeid: str) -> str:
    """A skipped test's group: its directory for the container suites, else its file."""
    path = nodeid.split("::", maxsplit=1)[0]
    parts = path.split("/")
    return "/".join(parts[:2]) + "/" if len(parts) > 2 and parts[1] in ("system", "package", "compat") else path


def skip_summary(skipped: list[Any], as_root: bool) -> list[str]:
    """The lines that end a run with skips: each reason with its count, the groups skipped, what enables them."""
    reasons = Counter(_skip_reason(r) for r in skipped)
    lines = [f"{count:4d}  {reason}{' (allowlisted)' if _allowed(reason) else ''}"
             for reason, count in reasons.most_common()]
    groups = Counter(_group(r.nodeid) for r in skipped)
    lines.append("skipped groups: " + ", ".join(f"{group} ({count})" for group, count in sorted(groups.items())))
    if not as_root:
        lines.append(f"to run them, install what they need and run as root: {ENABLE_ALL}")
    if not no_skip():
        lines.append(f"set {NO_SKIP}=1 to make these failures (as .ci/run does)")
    return lines


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    """Every skip of the run, grouped by reason and by group of tests, and how to run them all."""
    skipped = [r for r in terminalreporter.stats.get("skipped", []) if not hasattr(r, "wasxfail")]
    if not skipped:
        return
    terminalreporter.section(f"skips by reason ({len(skipped)})")
    for line in skip_summary(skipped, as_root=os.geteuid() == 0):
        terminalreporter.write_line(line)


@pytest.fixture(autouse=True)
def _logging_config_restored() -> Iterator[None]:
    """A test that configures logging in-process (test_logging.py) leaves the next test's config alone."""
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


@pytest.fixture
def make_daemon(tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    """Build (not start) daemons on temporary spools; all are killed at the end."""
    made: list[Daemon] = []

    def factory(name: str = "d", **settings: Any) -> Daemon:
        root = tmp_path / name
        root.mkdir()
        daemon = Daemon(root, settings)
        made.append(daemon)
        return daemon

    yield factory
    for daemon in made:
        if daemon.proc is not None:
            daemon.kill_all()


@pytest.fixture
def daemon(make_daemon: Callable[..., Daemon]) -> Iterator[Daemon]:
    """A started daemon with the default test settings."""
    d = make_daemon()
    d.start()
    yield d
    if d.proc is not None:
        d.stop()
