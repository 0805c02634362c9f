"""The fast parser against each supported Python's own ``ipaddress``: 3.11, 3.12 and 3.13.

fastip builds its tables from the running interpreter's ``ipaddress`` (and
the text of IPv4-mapped addresses changed in 3.13), so its agreement tests
(tests/unit/test_fastip.py, test_fastip_tables.py) must pass on each release
the package supports, not only on the one running this suite. Each runs in
a virtualenv of that interpreter with only pytest and hypothesis (fastip
needs nothing but the standard library), from PYTHONPATH=daemon.

Where the interpreter comes from: ``pythonX.Y`` on PATH, /usr/bin, or a
pyenv version (``$PYENV_ROOT``, ~/.pyenv); else the python3 of the Debian
release that ships it (3.11: bookworm, 3.13: trixie), in that release's
cached build root (tests/support/debroot.py; needs root). 3.12 is in no
Debian release, so it is tested only where an interpreter is installed;
it is then listed like the others, and never skipped.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.daemon import REPO
from tests.support.debroot import RELEASES, cached_root, unpack
from tests.support.nspawn_base import prepare_nspawn

SUPPORTED = ("3.11", "3.12", "3.13")
TESTS = ("tests/unit/test_fastip.py", "tests/unit/test_fastip_tables.py")
TOOLS = ("pytest>=8.0", "pytest-timeout>=2.3", "hypothesis>=6.100")
VENVS = REPO / "build" / "compat"
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")
# Seconds for making a virtualenv (pip fetches the tools) and for one run.
INSTALL_TIMEOUT = 600
RUN_TIMEOUT = 900
PYTEST_ARGS = ("-q", "-p", "no:cacheprovider", "--noconftest", "-o", "addopts=")


def _reports(python: Path) -> str:
    """``X.Y`` of an interpreter, or "" if it does not run."""
    try:
        out = subprocess.run([str(python), "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                             capture_output=True, text=True, timeout=30, check=False)
    except OSError:
        return ""
    return out.stdout.strip()


def local_interpreter(minor: str) -> Path | None:
    """An installed CPython ``minor`` (e.g. "3.12") with venv support, if any."""
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    candidates = [shutil.which(f"python{minor}"), f"/usr/bin/python{minor}",
                  *sorted(str(p) for p in pyenv.glob(f"{minor}.*/bin/python{minor}"))]
    for candidate in candidates:
        if candidate and Path(candidate).exists() and _reports(Path(candidate)) == minor:
            venv_ok = subprocess.run([candidate, "-c", "import ensurepip, venv"], capture_output=True, timeout=30,
                                     check=False)
            if venv_ok.returncode == 0:
                return Path(candidate)
    return None


def _release_of(minor: str) -> str:
    return next((release for release, python in RELEASES.items() if python == minor), "")


# Decided at collection: every supported version with somewhere to run.
# IPSPOOL_COMPAT_DEBIAN=1 prefers the Debian roots (what CI without pyenv does).
_PREFER_DEBIAN = os.environ.get("IPSPOOL_COMPAT_DEBIAN") == "1"
WHERE = {minor: ("debian" if _release_of(minor) and (_PREFER_DEBIAN or not local_interpreter(minor)) else "local")
         for minor in SUPPORTED if local_interpreter(minor) or _release_of(minor)}


def _venv(python: Path, minor: str) -> Path:
    """A cached virtualenv of ``python`` with TOOLS, under build/compat/."""
    key = hashlib.sha256(f"{python.resolve()}|{','.join(TOOLS)}".encode()).hexdigest()[:10]
    venv = VENVS / f"py{minor}-{key}"
    if (venv / ".ready").exists():
        return venv
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([str(python), "-m", "venv", str(venv)], check=True, timeout=INSTALL_TIMEOUT)
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                    *TOOLS], check=True, timeout=INSTALL_TIMEOUT)
    (venv / ".ready").touch()
    return venv


def _pytest_script(python: str, src: str) -> list[str]:
    """sh -c: say which Python runs, then the fast parser's tests from ``src``."""
    tests = " ".join(f"{src}/{t}" for t in TESTS)
    return ["sh", "-c",
            f'"{python}" -c "import sys; print(\'python\', \'%d.%d\' % sys.version_info[:2])" && '
            f'PYTHONPATH={src}/daemon:{src} PYTHONDONTWRITEBYTECODE=1 exec "{python}" -m pytest '
            f'{" ".join(PYTEST_ARGS)} --rootdir {src} {tests}']


def _run_local(minor: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    python = local_interpreter(minor)
    assert python is not None
    venv = _venv(python, minor)
    return subprocess.run(_pytest_script(str(venv / "bin" / "python"), str(REPO)), capture_output=True, text=True,
                          timeout=RUN_TIMEOUT, check=False, cwd=cwd)


def _run_debian(minor: str, base: Path) -> subprocess.CompletedProcess[str]:
    """In a fresh copy of the release's build root (it has python3-venv), the checkout bound read-only."""
    release = _release_of(minor)
    if os.geteuid() != 0 or shutil.which("systemd-nspawn") is None:
        pytest.skip(f"Python {minor} is not installed here; its Debian root ({release}) needs root and "
                    "systemd-nspawn (apt-get install systemd-container)")
    root = base / "root"
    unpack(cached_root(release, "build"), root)
    prepare_nspawn()
    tools = " ".join(shlex.quote(t) for t in TOOLS)
    setup = f"python3 -m venv /tmp/v && /tmp/v/bin/pip install -q --disable-pip-version-check {tools} && cd /tmp && "
    script = _pytest_script("/tmp/v/bin/python", "/src")
    # pip in the root trusts what this machine trusts (as packaging/build-deb.sh does).
    ca = [f"--bind-ro={HOST_CA}:/etc/ssl/host-ca.crt", "--setenv=PIP_CERT=/etc/ssl/host-ca.crt"]
    if not HOST_CA.exists():
        ca = []
    try:
        return subprocess.run(
            ["systemd-nspawn", "--quiet", "--register=no", "--keep-unit", "--pipe", "-D", str(root), *ca,
             f"--bind-ro={REPO}:/src", "--", "sh", "-c", setup + script[2]],
            capture_output=True, text=True, timeout=INSTALL_TIMEOUT + RUN_TIMEOUT, check=False,
        )
    finally:
        subprocess.run(["rm", "-rf", str(root)], check=False)


@pytest.mark.parametrize("minor", sorted(WHERE), ids=[f"python{m}-{WHERE[m]}" for m in sorted(WHERE)])
def test_the_fast_parser_agrees_with_ipaddress_on_each_supported_python(minor: str, tmp_path: Path) -> None:
    """test_fastip*.py pass under Python ``minor``, with nothing skipped."""
    run = _run_local(minor, tmp_path) if WHERE[minor] == "local" else _run_debian(minor, tmp_path)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-4000:]
    assert f"python {minor}\n" in run.stdout, output[-2000:]
    summary = output.strip().splitlines()[-1]
    assert " passed" in summary and "skipped" not in summary and "failed" not in summary, summary


def test_the_versions_tested_are_the_ones_pyproject_declares() -> None:
    """SUPPORTED is what the classifiers say; 3.11 and 3.13 always have somewhere to run (Debian 12 and 13)."""
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = tuple(c.rsplit(" :: ", 1)[1] for c in project["classifiers"]
                     if c.startswith("Programming Language :: Python :: 3.") and c.count("::") == 2)
    assert declared == SUPPORTED
    assert project["requires-python"] == f">={SUPPORTED[0]}"
    assert {"3.11", "3.13"} <= set(WHERE)
    assert sys.version_info[:2] >= (3, 11)
