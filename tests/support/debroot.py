"""Fresh Debian roots for the package tests, bootstrapped once a day and cached.

Two releases (``RELEASES``: Debian 12 bookworm with Python 3.11, Debian 13
trixie with Python 3.13) and two kinds of root for each:

* ``test``: what the package needs at run time and nothing more (systemd,
  python3). python3-venv is deliberately absent: the packaged virtualenv
  must run without it. The package is installed and exercised here.
* ``build``: debhelper, dh-python, python3-venv, build-essential and lintian; the
  package is built inside it (``dpkg-buildpackage``), so it links against
  and depends on that release's own packages, never the build host's.

``debootstrap --variant=minbase`` takes about a minute per root; the result
is kept as a tarball in /var/cache/ipspool-test/ (``$IPSPOOL_TEST_CACHE``
elsewhere), keyed by release, kind, package list and date, and unpacked
afresh for each use. The mirror is the one this machine's apt uses (never a
fixed address). Recipe: ../shared/notes/systemd-in-ci.md.

    python -m tests.support.debroot trixie build    # prints the tarball's path
"""

from __future__ import annotations

import datetime
import fcntl
import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

__all__ = ["BUILD_INCLUDE", "CACHE", "INCLUDE", "RELEASES", "cached_root", "mirror", "unpack"]

CACHE = Path(os.environ.get("IPSPOOL_TEST_CACHE", "/var/cache/ipspool-test"))
# Debian release (suite) -> the python3 it ships, which the package is built for.
RELEASES = {"bookworm": "3.11", "trixie": "3.13"}
INCLUDE = ("systemd", "systemd-sysv", "dbus", "python3")
# perl-openssl-defaults: debootstrap does not resolve the virtual
# perl-openssl-abi-3 that lintian's libnet-ssleay-perl depends on.
BUILD_INCLUDE = ("build-essential", "debhelper", "dh-python", "python3", "python3-venv", "ca-certificates", "lintian",
                 "perl-openssl-defaults")
_KINDS = {"test": ("minbase", INCLUDE), "build": ("build", BUILD_INCLUDE)}


def mirror() -> str:
    """The first Debian mirror in this machine's apt sources."""
    sources = Path("/etc/apt/sources.list.d/debian.sources")
    if sources.exists():
        for line in sources.read_text().splitlines():
            if line.startswith("URIs:"):
                return line.split()[1]
    legacy = Path("/etc/apt/sources.list")
    if legacy.exists():
        for line in legacy.read_text().splitlines():
            match = re.match(r"deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+\w+\s", line)
            if match:
                return match.group(1)
    raise RuntimeError("no Debian mirror in /etc/apt/sources.list(.d); debootstrap needs one")


def _key(suite: str, kind: str, today: datetime.date) -> tuple[str, str]:
    """(file name, glob of the same root on other days)."""
    flavour, include = _KINDS[kind]
    packages = hashlib.sha256(",".join(include).encode()).hexdigest()[:8]
    stem = f"{suite}-{flavour}-{packages}"
    return f"{stem}-{today:%Y%m%d}.tar", f"{stem}-*.tar"


def cached_root(suite: str = "bookworm", kind: str = "test", today: datetime.date | None = None) -> Path:
    """The tarball of today's ``kind`` root of ``suite``, bootstrapping it if it is not cached yet."""
    if suite not in RELEASES:
        raise ValueError(f"unknown Debian release {suite!r}; known: {', '.join(RELEASES)}")
    CACHE.mkdir(parents=True, exist_ok=True)
    name, same_root = _key(suite, kind, today or datetime.date.today())
    tarball = CACHE / name
    with open(CACHE / f".lock-{suite}-{kind}", "w") as lock:
        # One bootstrap of a root at a time, even across test sessions.
        fcntl.flock(lock, fcntl.LOCK_EX)
        if tarball.exists():
            return tarball
        _bootstrap(suite, _KINDS[kind][1], tarball)
        for old in CACHE.glob(same_root):
            if old != tarball:
                old.unlink()  # yesterday's copy of this root: one is enough
        return tarball


def _bootstrap(suite: str, include: tuple[str, ...], tarball: Path) -> None:
    work = CACHE / f".bootstrap-{suite}-{os.getpid()}"
    subprocess.run(["rm", "-rf", str(work)], check=True)
    try:
        result = subprocess.run(
            ["debootstrap", "--variant=minbase", f"--include={','.join(include)}", suite, str(work), mirror()],
            check=False, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=1200,
        )
        if result.returncode:
            log = work / "debootstrap/debootstrap.log"
            detail = log.read_text()[-3000:] if log.exists() else result.stderr[-3000:]
            raise RuntimeError(f"debootstrap {suite} failed ({result.returncode}):\n{detail}")
        # apt's downloaded archives are not needed in the image.
        subprocess.run(["sh", "-c", f"rm -f {work}/var/cache/apt/archives/*.deb"], check=True)
        partial = tarball.with_suffix(".partial")
        subprocess.run(["tar", "-C", str(work), "--numeric-owner", "-cf", str(partial), "."], check=True)
        partial.rename(tarball)
    finally:
        subprocess.run(["rm", "-rf", str(work)], check=True)


def unpack(tarball: Path, root: Path) -> None:
    root.mkdir(parents=True)
    subprocess.run(["tar", "-C", str(root), "--numeric-owner", "-xpf", str(tarball)], check=True)


if __name__ == "__main__":
    print(cached_root(*sys.argv[1:3]))
    sys.exit(0)
