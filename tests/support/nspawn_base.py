"""A booted systemd-nspawn container, driven through nsenter: the part the
systemd tests (tests/system/) and the package tests (tests/package/) share.

Recipe and pitfalls: ../shared/notes/systemd-in-ci.md. Only processes this
module starts are touched: the container is powered off through its own
systemd, or its nspawn process is killed by pid.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

from tests.support.daemon import wait_for

__all__ = ["NspawnContainer", "prepare_nspawn"]

_NSPAWN_DIR = "/run/systemd/nspawn"


def _mounted(path: str) -> bool:
    with open("/proc/self/mountinfo") as handle:
        return any(line.split()[4] == path for line in handle)


def prepare_nspawn() -> None:
    """Mount the tmpfs systemd-nspawn needs on /run/systemd/nspawn, unless it is there."""
    if not _mounted(_NSPAWN_DIR):
        # nspawn refuses without it ("Attempted to remove disk file system
        # under /run/systemd/nspawn/propagate/..."); another test may have
        # mounted it already, and then it is left alone.
        os.makedirs(_NSPAWN_DIR, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "tmpfs", _NSPAWN_DIR], check=True)


class NspawnContainer:
    """One container; subclasses say what root it boots and how users run."""

    def __init__(self, name: str, log: Path) -> None:
        self.name = name
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.leader = 0

    def boot_nspawn(self, root_args: list[str]) -> None:
        """Boot with ``root_args`` (e.g. ``-D ROOT``) and wait until systemd has finished booting."""
        prepare_nspawn()
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                ["systemd-nspawn", *root_args, "--register=no", "--keep-unit", "-M", self.name,
                 "--console=pipe", "--boot"],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )
        self.leader = wait_for(self._find_leader, 30, 0.05, what=f"container {self.name} to start")
        # Until PID 1 has made its socket, systemctl fails at once with no
        # answer; after that, --wait returns when the boot is done.
        state = wait_for(self._boot_state, 60, 0.1, what=f"systemd in {self.name} to answer")
        assert state in ("running", "degraded"), f"container {self.name} booted to {state!r}; see {self.log}"

    def _boot_state(self) -> str:
        # "offline": systemctl could not reach the manager yet (too early in the boot): ask again.
        state = self.run("systemctl", "is-system-running", "--wait", check=False, timeout=90).stdout.strip()
        return "" if state == "offline" else state

    def _find_leader(self) -> int:
        """The container's PID 1: the child of our nspawn process, once it has exec'd systemd
        (entering it earlier would land in half-made namespaces)."""
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"systemd-nspawn exited with {self.proc.returncode}: {self.log.read_text()[-2000:]}")
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        for pid in children.read_text().split():
            try:
                if Path(f"/proc/{pid}/comm").read_text().strip() == "systemd":
                    return int(pid)
            except OSError:
                continue
        return 0

    def poweroff(self) -> None:
        if self.proc is None:
            return
        self.run("systemctl", "poweroff", check=False, timeout=30)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()  # our own nspawn process, by its pid
            self.proc.wait(10)
        self.proc = None

    def as_user(self, user: str, argv: tuple[str, ...]) -> tuple[str, ...]:
        """The command line that runs ``argv`` as ``user``."""
        return ("setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups", *argv)

    def run(self, *argv: str, check: bool = True, timeout: float = 60, stdin: str | None = None,
            user: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` in the container, as root or as ``user``."""
        if user is not None:
            argv = self.as_user(user, argv)
        result = subprocess.run(
            ["nsenter", "-t", str(self.leader), "-a", *argv], input=stdin, capture_output=True, text=True,
            timeout=timeout, check=False, env=container_env(),
        )
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(argv)} -> {result.returncode}\n{result.stdout}\n{result.stderr}")
        return result

    def sh(self, script: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return self.run("sh", "-c", script, **kwargs)

    def exists(self, path: str) -> bool:
        return self.run("test", "-e", path, check=False).returncode == 0


# What tests/conftest.py sets so that no test on the host reads the host's
# /etc/ipspool: inside a container the real rule must apply (the package
# tests check that `ipspool status` finds /etc/ipspool/ipspool.toml itself).
_HOST_ONLY = ("IPSPOOL_TEST_SYSTEM_DIR", "IPSPOOL_CONFIG")


def container_env() -> dict[str, str]:
    """The environment nsenter passes into the container: the host's, less the host-only switches."""
    return {k: v for k, v in os.environ.items() if k not in _HOST_ONLY}
