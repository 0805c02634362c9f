"""A throw-away systemd in a container, with ipspool installed from this repository.

Recipe and pitfalls: ../shared/notes/systemd-in-ci.md. The container runs
the host's /usr on a volatile root (``systemd-nspawn -D / --volatile=yes``),
with the repository, the test virtualenv and its base Python bound read-only
at the same paths. The packaged unit, sysusers and tmpfiles files are
installed as they are; a test-only drop-in points ExecStart=/ExecReload=/ExecStopPost= at
the virtualenv and makes it visible through the sandbox.

Only processes this module starts are touched: the container is powered off
through its own systemd, or its nspawn process is signalled by pid.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.daemon import REPO, wait_for, write_toml
from tests.support.nspawn_base import NspawnContainer

__all__ = ["Machine", "boot_ipspool", "require_container", "wait_for"]

SPOOL = "/var/spool/ipspool"
CONFIG = "/etc/ipspool/ipspool.toml"
UNIT = "ipspool.service"
PRODUCER = "producer"
_HOMES = ("/root", "/home")


def require_container() -> None:
    """Skip where a container cannot be booted (a failure under IPSPOOL_NO_SKIP=1, see tests/conftest.py)."""
    reason = ""
    if os.geteuid() != 0:
        reason = "booting a systemd container needs root"
    elif shutil.which("systemd-nspawn") is None:
        reason = "systemd-nspawn is missing (apt-get install systemd-container)"
    elif shutil.which("nsenter") is None:
        reason = "nsenter is missing (util-linux)"
    if reason:
        pytest.skip(reason)


def _under(path: str, parents: tuple[str, ...]) -> bool:
    return any(path == p or path.startswith(p.rstrip("/") + "/") for p in parents)


def python_paths() -> list[str]:
    """The directories the service's interpreter needs: the repository, the venv, its base Python."""
    paths: list[str] = []
    for candidate in (str(REPO), sys.prefix, sys.base_prefix, os.path.dirname(os.path.realpath(sys.executable))):
        real = os.path.realpath(candidate)
        if _under(real, ("/usr",)) or _under(real, tuple(paths)):
            continue  # the container has the host's /usr; nested paths come with their parent
        paths = [p for p in paths if not _under(p, (real,))] + [real]
    return paths


class Machine(NspawnContainer):
    """One booted container; ``run`` executes inside it through nsenter."""

    # -- life cycle ---------------------------------------------------------

    def boot(self, binds: list[str]) -> None:
        """The host's /usr on a volatile root, with ``binds`` read-only at the same paths."""
        self.boot_nspawn(["-D", "/", "--volatile=yes", *[f"--bind-ro={b}" for b in binds]])

    def as_user(self, user: str, argv: tuple[str, ...]) -> tuple[str, ...]:
        """A producer: ``user`` with the producer group as its primary group."""
        return ("setpriv", f"--reuid={user}", "--regid=ipspool-submit", "--init-groups", *argv)

    def write(self, path: str, text: str) -> None:
        self.run("sh", "-c", 'mkdir -p "$(dirname "$1")" && cat > "$1"', "sh", path, stdin=text)

    def systemctl(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return self.run("systemctl", *args, check=check, timeout=timeout)

    def show(self, *props: str) -> dict[str, str]:
        out = self.systemctl("show", UNIT, *[f"--property={p}" for p in props]).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    # -- the journal --------------------------------------------------------

    def cursor(self) -> str:
        out = self.run("journalctl", "-n", "1", "-o", "json", "--no-pager").stdout.strip()
        return str(json.loads(out.splitlines()[-1])["__CURSOR"]) if out else ""

    def journal(self, after: str = "", *extra: str) -> list[dict[str, Any]]:
        """Entries of the unit (``extra``: more journalctl options) logged after the cursor ``after``."""
        args = ["journalctl", "-u", UNIT, "-o", "json", "--no-pager", *extra]
        if after:
            # Not --after-cursor: with matches, systemd 252's journalctl skips the
            # first *matching* entry after the cursor. --cursor is inclusive.
            args.append(f"--cursor={after}")
        entries = [json.loads(line) for line in self.run(*args).stdout.splitlines() if line.strip()]
        return [e for e in entries if e["__CURSOR"] != after]

    def control_exit_status(self, after: str, command: str = "ExecReload", timeout: float = 30) -> int:
        """The exit status of the unit's ``command`` (systemd's process-exit entry) logged after ``after``."""
        def find() -> list[int]:  # a list, so that exit status 0 counts as found
            return [int(e["EXIT_STATUS"]) for e in self.journal(after)
                    if e.get("COMMAND") == command and "EXIT_STATUS" in e]

        return wait_for(find, timeout, 0.2, what=f"the exit of {command}")[0]  # type: ignore[no-any-return]

    def events(self, after: str = "", name: str | None = None) -> list[dict[str, Any]]:
        """Our JSON log events (journald already stripped the <N> prefix)."""
        found = []
        for entry in self.journal(after):
            message = entry.get("MESSAGE")
            if entry.get("_TRANSPORT") == "stdout" and isinstance(message, str) and message.startswith("{"):
                event = json.loads(message)
                if name is None or event.get("event") == name:
                    found.append(event)
        return found

    def wait_event(self, name: str, after: str, timeout: float = 30,
                   where: Callable[[dict[str, Any]], bool] = lambda e: True) -> dict[str, Any]:
        def find() -> dict[str, Any] | None:
            return next((e for e in self.events(after, name) if where(e)), None)

        return wait_for(find, timeout, 0.2, what=f"journal event {name}")  # type: ignore[no-any-return]

    # -- ipspool ------------------------------------------------------------

    def configure(self, **sections: dict[str, Any]) -> None:
        """Write /etc/ipspool/ipspool.toml: the packaged file plus ``sections``."""
        data = tomllib.loads((REPO / "systemd" / "ipspool.toml").read_text())
        for section, body in sections.items():
            data[section] = {**data.get(section, {}), **body}
        self.write(CONFIG, _toml(data))

    def submit(self, name: str, content: str) -> None:
        """A producer (non-root, in ipspool-submit) writes into tmp/ and renames into incoming/."""
        self.run("sh", "-c", f'cat > {SPOOL}/tmp/.{name} && mv {SPOOL}/tmp/.{name} {SPOOL}/incoming/{name}',
                 stdin=content, user=PRODUCER)

    def result(self, name: str) -> list[dict[str, Any]] | None:
        out = self.run("cat", f"{SPOOL}/results/{name}.jsonl", check=False)
        if out.returncode != 0:
            return None
        return [json.loads(line) for line in out.stdout.splitlines()]

    def wait_result(self, name: str, timeout: float = 60) -> list[dict[str, Any]]:
        return wait_for(lambda: self.result(name), timeout, 0.2, what=f"result of {name}")  # type: ignore[no-any-return]

    def main_pid(self) -> int:
        return int(self.show("MainPID")["MainPID"])

    def pids(self, title: str) -> list[int]:
        out = self.run("pgrep", "-f", f"^{title}", check=False).stdout
        return [int(p) for p in out.split()]

    def reset(self, **sections: dict[str, Any]) -> str:
        """Stop the service, empty the spool, configure, start; returns a journal cursor from before."""
        self.systemctl("stop", UNIT, check=False)
        self.systemctl("reset-failed", UNIT, check=False)
        self.sh(f"find {SPOOL} -mindepth 2 \\( -type f -o -type l -o -type p \\) -delete")
        self.configure(**sections)
        cursor = self.cursor()
        self.systemctl("start", UNIT)
        return cursor


def _toml(data: dict[str, Any]) -> str:
    path = Path(f"/tmp/ipspool-system-{os.getpid()}-{time.monotonic_ns()}.toml")
    try:
        return write_toml(path, data).read_text()
    finally:
        path.unlink(missing_ok=True)


def dropin(extra: str = "") -> str:
    """The test-only drop-in: run from the test virtualenv, visible through the sandbox."""
    paths = python_paths()
    lines = [
        "[Service]",
        "ExecStart=",
        f"ExecStart={sys.executable} -m ipspool run --config {CONFIG}",
        "ExecReload=",
        f"ExecReload={sys.executable} -m ipspool reload --config {CONFIG} --pid $MAINPID",
        "ExecStopPost=",
        f"ExecStopPost=-{sys.executable} -m ipspool metrics-down --config {CONFIG}",
        f"Environment=PYTHONPATH={REPO}",  # test stages: tests.support.stagelib
        # PrivateTmp= and ProtectHome= would hide a venv under /tmp or /root.
        f"BindReadOnlyPaths={' '.join(paths)}",
    ]
    if any(_under(p, _HOMES) for p in paths):
        lines.append("ProtectHome=tmpfs")  # tmpfs over /root and /home, with the binds above on top
    return "\n".join(lines) + "\n" + extra


GENERATOR = "/etc/systemd/system-generators/ipspool-generator"
TEST_IPSPOOL = "/etc/ipspool/test-ipspool"


def install_generator(machine: Machine) -> None:
    """systemd/ipspool-generator, running ``ipspool`` from the test virtualenv (no /usr/bin/ipspool here)."""
    machine.write(TEST_IPSPOOL, f'#!/bin/sh\nPYTHONPATH={REPO} exec {sys.executable} -m ipspool "$@"\n')
    machine.run("chmod", "755", TEST_IPSPOOL)
    text = (REPO / "systemd" / "ipspool-generator").read_text()
    machine.write(GENERATOR, text.replace("${IPSPOOL_BIN:-/usr/bin/ipspool}", TEST_IPSPOOL))
    machine.run("chmod", "755", GENERATOR)


def boot_ipspool(name: str, log_dir: Path, extra_dropin: str = "") -> Iterator[Machine]:
    """Boot, install unit + sysusers + tmpfiles + config + a producer user; power off at the end."""
    require_container()
    machine = Machine(f"{name}-{os.getpid()}", log_dir / f"{name}.nspawn.log")
    # A bind mount keeps its directory's own mode: a clone in a 0700 folder
    # (mktemp -d) would keep the service user and the producer out of the
    # interpreter. Let others traverse the bound folders while the container
    # runs, and put their modes back afterwards.
    restore: dict[str, int] = {}
    for path in python_paths():
        mode = os.stat(path).st_mode
        if not mode & 0o001:
            restore[path] = mode
            os.chmod(path, mode | 0o001)
    try:
        machine.boot(python_paths())
        systemd_dir = REPO / "systemd"
        machine.write("/etc/systemd/system/ipspool.service", (systemd_dir / "ipspool.service").read_text())
        machine.write("/etc/systemd/system/ipspool.service.d/test.conf", dropin(extra_dropin))
        machine.write("/etc/sysusers.d/ipspool.conf", (systemd_dir / "ipspool.sysusers").read_text())
        machine.write("/etc/tmpfiles.d/ipspool.conf", (systemd_dir / "ipspool.tmpfiles").read_text())
        install_generator(machine)
        machine.configure()
        machine.sh("systemd-sysusers && systemd-tmpfiles --create /etc/tmpfiles.d/ipspool.conf")
        machine.run("useradd", "--no-create-home", "-G", "ipspool-submit", PRODUCER)
        # The volatile root's /root is 0750: let the producer reach a venv bound under it.
        for path in python_paths():
            for parent in Path(path).parents:
                if str(parent) != "/":
                    machine.run("chmod", "o+x", str(parent))
        machine.systemctl("daemon-reload")
        yield machine
    finally:
        machine.poweroff()
        for path, mode in restore.items():
            os.chmod(path, mode)
