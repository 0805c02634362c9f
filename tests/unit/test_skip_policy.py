"""The skip policy of tests/conftest.py: IPSPOOL_NO_SKIP=1 fails skips; every run sums them up by reason."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.conftest import ENABLE_ALL, skip_summary
from tests.support.daemon import REPO

SAMPLE = '''
import pytest

def test_skips_inside():
    pytest.skip("tool X is missing")

@pytest.mark.skipif(True, reason="tool X is missing")
def test_skips_by_marker():
    pass

@pytest.mark.skipif(True, reason="not root")
def test_skips_for_another_reason():
    pass

@pytest.mark.xfail(reason="a known bug", strict=True)
def test_expected_failure():
    assert False

def test_runs():
    pass
'''


def run_sample(tmp_path: Path, no_skip: bool) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_sample.py").write_text(SAMPLE)
    # CI=true makes pytest print the short summary untruncated, which would repeat each reason.
    env = {k: v for k, v in os.environ.items() if k not in ("IPSPOOL_NO_SKIP", "CI")}
    env["PYTHONPATH"] = str(REPO)
    if no_skip:
        env["IPSPOOL_NO_SKIP"] = "1"
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "tests.conftest", "-p", "no:cacheprovider",
         "--rootdir", str(tmp_path), "-c", os.devnull, str(tmp_path / "test_sample.py")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )


def test_without_the_switch_skips_are_summed_up_by_reason(tmp_path: Path) -> None:
    """Skips stay skips, and the run ends with each reason and its count."""
    done = run_sample(tmp_path, no_skip=False)
    assert done.returncode == 0, done.stdout
    assert "skips by reason (3)" in done.stdout
    assert "   2  tool X is missing" in done.stdout and "   1  not root" in done.stdout


def test_with_the_switch_every_skip_fails_and_an_xfail_stays_an_xfail(tmp_path: Path) -> None:
    """IPSPOOL_NO_SKIP=1: each of the three skips is a failure naming its reason; the rest is untouched."""
    done = run_sample(tmp_path, no_skip=True)
    assert done.returncode == 1, done.stdout
    assert done.stdout.count("IPSPOOL_NO_SKIP=1 but this test skipped:") == 3
    assert "1 passed" in done.stdout and "1 xfailed" in done.stdout
    assert "skips by reason" not in done.stdout


def test_the_summary_names_the_skipped_groups_and_the_command_that_enables_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As non-root: the container suites by directory, other tests by file, and `sudo make test`."""
    monkeypatch.delenv("IPSPOOL_NO_SKIP", raising=False)

    def skipped(nodeid: str, reason: str) -> SimpleNamespace:
        return SimpleNamespace(nodeid=nodeid, longrepr=(nodeid, 1, f"Skipped: {reason}"))

    reports = [skipped("tests/system/test_systemd.py::test_a", "needs root"),
               skipped("tests/system/test_systemd_nonetwork.py::test_b", "needs root"),
               skipped("tests/package/test_deb.py::test_c[bookworm]", "needs root"),
               skipped("tests/e2e/test_rdns.py::test_d", "dnsmasq is missing")]
    lines = skip_summary(reports, as_root=False)
    assert lines[:2] == ["   3  needs root", "   1  dnsmasq is missing"]
    assert lines[2] == "skipped groups: tests/e2e/test_rdns.py (1), tests/package/ (1), tests/system/ (2)"
    assert lines[3] == f"to run them, install what they need and run as root: {ENABLE_ALL}"
    assert ENABLE_ALL == "sudo make test"
    assert not any("run as root" in line for line in skip_summary(reports, as_root=True))
