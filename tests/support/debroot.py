"""A fresh Debian 12 root for package tests, bootstrapped once a day and cached.

``debootstrap --variant=minbase`` with systemd and python3 takes about a
minute; the result is kept as a tarball in /var/cache/ipspool-test/, keyed by
the date and the package list, and unpacked afresh for each test session.
The mirror is the one this machine's apt uses (never a fixed address).
Recipe: ../shared/notes/systemd-in-ci.md.
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

__all__ = ["CACHE", "INCLUDE", "cached_root", "mirror", "unpack"]

CACHE = Path("/var/cache/ipspool-test")
SUITE = "bookworm"
# What the package needs and nothing more: python3-venv is deliberately not
# here (the packaged virtualenv must run without it).
INCLUDE = ("systemd", "systemd-sysv", "dbus", "python3")


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
            match = re.match(r"deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+" + SUITE + r"\s", line)
            if match:
                return match.group(1)
    raise RuntimeError("no Debian mirror in /etc/apt/sources.list(.d); debootstrap needs one")


def _key(today: datetime.date) -> str:
    packages = hashlib.sha256(",".join(INCLUDE).encode()).hexdigest()[:8]
    return f"{SUITE}-minbase-{packages}-{today:%Y%m%d}.tar"


def cached_root(today: datetime.date | None = None) -> Path:
    """The tarball of today's root, bootstrapping it if it is not cached yet."""
    CACHE.mkdir(parents=True, exist_ok=True)
    tarball = CACHE / _key(today or datetime.date.today())
    with open(CACHE / ".lock", "w") as lock:
        # One bootstrap at a time, even across test sessions.
        fcntl.flock(lock, fcntl.LOCK_EX)
        if tarball.exists():
            return tarball
        work = CACHE / f".bootstrap-{os.getpid()}"
        subprocess.run(["rm", "-rf", str(work)], check=True)
        try:
            subprocess.run(
                ["debootstrap", "--variant=minbase", f"--include={','.join(INCLUDE)}", SUITE, str(work), mirror()],
                check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=600,
            )
            # apt's downloaded archives are not needed in the image.
            subprocess.run(["sh", "-c", f"rm -f {work}/var/cache/apt/archives/*.deb"], check=True)
            partial = tarball.with_suffix(".partial")
            subprocess.run(["tar", "-C", str(work), "--numeric-owner", "-cf", str(partial), "."], check=True)
            partial.rename(tarball)
        finally:
            subprocess.run(["rm", "-rf", str(work)], check=True)
        for old in CACHE.glob(f"{SUITE}-minbase-*.tar"):
            if old != tarball:
                old.unlink()  # yesterday's root: one cached root is enough
        return tarball


def unpack(tarball: Path, root: Path) -> None:
    root.mkdir(parents=True)
    subprocess.run(["tar", "-C", str(root), "--numeric-owner", "-xpf", str(tarball)], check=True)


if __name__ == "__main__":
    print(cached_root())
    sys.exit(0)
