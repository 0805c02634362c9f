"""A booted systemd-nspawn container on a root directory, driven through nsenter.

Recipe and pitfalls: ../shared/notes/systemd-in-ci.md. Only processes this
module starts are touched: the container is powered off through its own
systemd, or its nspawn process is killed by pid.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.support.nspawn_base import NspawnContainer

__all__ = ["Container"]


class Container(NspawnContainer):
    """A fresh Debian root (debootstrap), booted as it is."""

    def __init__(self, root: Path, name: str, log: Path) -> None:
        super().__init__(name, log)
        self.root = root

    def boot(self) -> None:
        self.boot_nspawn(["-D", str(self.root)])

    def as_user(self, user: str, argv: tuple[str, ...]) -> tuple[str, ...]:
        """``user`` with that user's own groups, and a HOME that exists."""
        return ("setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups", "env", "HOME=/", *argv)

    def run(self, *argv: str, check: bool = True, timeout: float = 120, stdin: str | None = None,
            user: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` in the container (apt never asks questions), as root or as ``user``."""
        if user is not None:
            argv = self.as_user(user, argv)
        return super().run("env", "DEBIAN_FRONTEND=noninteractive", *argv, check=check, timeout=timeout, stdin=stdin)

    def active(self, unit: str) -> str:
        return self.run("systemctl", "is-active", unit, check=False).stdout.strip()

    def main_pid(self, unit: str) -> int:
        return int(self.run("systemctl", "show", "--value", "--property=MainPID", unit).stdout.strip() or 0)
