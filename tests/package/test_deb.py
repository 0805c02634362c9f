"""The Debian package on a fresh Debian 12: install, use, reload, upgrade, remove, purge.

packaging/build-deb.sh builds the package twice (VERSION-1 and VERSION-2, for
the upgrade) into a temporary directory; a minimal bookworm root from
debootstrap (cached for the day in /var/cache/ipspool-test/, see debroot.py)
is unpacked afresh, booted with systemd-nspawn, and the package is installed
with apt inside, offline. The tests run in file order on that one machine:
each step starts from the state the previous one left, as an operator's
machine would.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from ipspool.cli import build_parser
from ipspool.tools.completion import script
from tests.support.container import Container
from tests.support.daemon import REPO, wait_for
from tests.support.debroot import cached_root, unpack

pytestmark = [pytest.mark.package, pytest.mark.timeout(600)]

UNIT = "ipspool.service"
CONFIG = "/etc/ipspool/ipspool.toml"
SPOOL = "/var/spool/ipspool"
DEBS = "/var/cache/ipspool-debs"
UPSTREAM = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
FIRST, SECOND = f"{UPSTREAM}-1", f"{UPSTREAM}-2"

# alice may only submit; bob may also read results (group ipspool).
TEST_USERS = """\
u alice - "producer" /
m alice ipspool-submit
u bob - "producer who reads results" /
m bob ipspool-submit
m bob ipspool
"""


def _missing() -> str:
    if os.geteuid() != 0:
        return "the package test needs root (debootstrap, systemd-nspawn)"
    for tool, package in (("debootstrap", "debootstrap"), ("systemd-nspawn", "systemd-container"),
                          ("nsenter", "util-linux"), ("dpkg-deb", "dpkg")):
        if shutil.which(tool) is None:
            return f"{tool} is missing (apt-get install {package})"
    if subprocess.run(["/usr/bin/python3", "-c", "import ensurepip"], capture_output=True, check=False).returncode:
        return "/usr/bin/python3 cannot make virtualenvs (apt-get install python3-venv)"
    return ""


@pytest.fixture(scope="module")
def debs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    reason = _missing()
    if reason:
        pytest.skip(reason)
    out = tmp_path_factory.mktemp("debs")
    # Both versions at once (each build has its own staging directory).
    builds = {
        version: subprocess.Popen(
            [str(REPO / "packaging" / "build-deb.sh")], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            env={**os.environ, "IPSPOOL_DEB_VERSION": version, "IPSPOOL_DEB_OUT": str(out)},
        )
        for version in (FIRST, SECOND)
    }
    built = {}
    for version, proc in builds.items():
        output, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"build-deb.sh failed for {version}:\n{output.decode()[-3000:]}"
        (built[version],) = out.glob(f"ipspool_{version}_*.deb")
    return built


@pytest.fixture(scope="module")
def machine(debs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Container]:
    base = tmp_path_factory.mktemp("debian")
    root = base / "root"
    unpack(cached_root(), root)
    (root / DEBS.lstrip("/")).mkdir(parents=True)
    for deb in debs.values():
        shutil.copy(deb, root / DEBS.lstrip("/") / deb.name)
    (root / "etc/sysusers.d").mkdir(parents=True, exist_ok=True)
    (root / "etc/sysusers.d/ipspool-test.conf").write_text(TEST_USERS)
    box = Container(root, f"ipspool-pkg-{os.getpid()}", base / "console.log")
    try:
        box.boot()
        yield box
    finally:
        box.poweroff()
        shutil.rmtree(root, ignore_errors=True)


def _install(box: Container, version: str) -> subprocess.CompletedProcess[str]:
    (deb,) = [name for name in box.run("ls", DEBS).stdout.split() if f"_{version}_" in name]
    return box.run("apt-get", "install", "-y", "--no-install-recommends", f"{DEBS}/{deb}", timeout=180)


def _result(box: Container, name: str, timeout: float = 60) -> list[dict[str, object]]:
    path = f"{SPOOL}/results/{name}.jsonl"
    wait_for(lambda: box.exists(path), timeout, 0.2, what=f"result {path}")
    return [json.loads(line) for line in box.run("cat", path).stdout.splitlines()]


def _inputs_of(box: Container, name: str) -> list[object]:
    return [json.loads(line)["input"] for line in box.run("cat", f"{SPOOL}/results/{name}.jsonl").stdout.splitlines()]


def _journal_count(box: Container, event: str) -> int:
    out = box.run("journalctl", "-u", UNIT, "-o", "cat", "--no-pager").stdout
    return sum(1 for line in out.splitlines() if f'"event":"{event}"' in line.replace(" ", ""))


def _reload_statuses(box: Container) -> list[int]:
    """Exit statuses of every ExecReload so far, from systemd's own journal entries."""
    out = box.run("journalctl", "-u", UNIT, "-o", "json", "--no-pager").stdout
    entries = [json.loads(line) for line in out.splitlines() if line.strip()]
    return [int(e["EXIT_STATUS"]) for e in entries if e.get("COMMAND") == "ExecReload" and "EXIT_STATUS" in e]


def test_install_enables_and_starts_the_service(machine: Container) -> None:
    """apt installs the package offline; the service is enabled, active, and answers `ipspool status`."""
    _install(machine, FIRST)
    assert machine.run("systemctl", "is-enabled", UNIT).stdout.strip() == "enabled"
    wait_for(lambda: machine.active(UNIT) == "active", 60, 0.2, what="ipspool active after install")
    assert machine.run("getent", "group", "ipspool-submit").returncode == 0
    assert "ipspool-submit" in machine.run("id", "-nG", "ipspool").stdout.split()
    # The daemon publishes its state for `ipspool status` shortly after READY=1.
    wait_for(lambda: "State: running" in machine.run("ipspool", "status", "--config", CONFIG).stdout, 10, 0.2,
             what="ipspool status to say running")
    assert machine.run("ipspool", "--version", user="alice").stdout.strip() == f"ipspool {UPSTREAM}"
    page = machine.run("sh", "-c", "zcat /usr/share/man/man8/ipspool.8.gz").stdout
    assert page.startswith(".TH IPSPOOL 8 ") and f'"ipspool {UPSTREAM}"' in page.splitlines()[0]
    assert ".SH NAME" in page and "SIGHUP" in page
    completion = machine.run("cat", "/usr/share/bash-completion/completions/ipspool").stdout
    assert completion == script("bash", build_parser())
    zsh = machine.run("cat", "/usr/share/zsh/vendor-completions/_ipspool").stdout
    assert zsh == script("zsh", build_parser())
    assert "License: MIT" in machine.run("cat", "/usr/share/doc/ipspool/copyright").stdout
    for installed, source in (("/usr/lib/sysusers.d/ipspool.conf", "ipspool.sysusers"),
                              ("/usr/lib/tmpfiles.d/ipspool.conf", "ipspool.tmpfiles")):
        assert machine.run("cat", installed).stdout == (REPO / "systemd" / source).read_text(), installed
    packaged = tomllib.loads(machine.run("cat", CONFIG).stdout)
    assert packaged["spool"]["runtime_dir"] == "/run/ipspool"
    assert packaged["spool"]["producer_group"] == "ipspool-submit"


def test_producer_group_member_submits_but_cannot_read_results(machine: Container) -> None:
    """alice (ipspool-submit only) submits as herself; the result appears, and only root and group ipspool read it."""
    machine.run("sh", "-c", "printf '192.0.2.1\\nnot an address\\n10.1.2.3\\n' > /tmp/alice.txt", user="alice")
    submitted = machine.run("ipspool", "submit", "--config", CONFIG, "/tmp/alice.txt", user="alice")
    assert "as incoming/alice.txt" in submitted.stdout
    records = _result(machine, "alice.txt")
    assert [r["input"] for r in records] == ["192.0.2.1", "not an address", "10.1.2.3"]
    assert "error" in records[1]
    # The issue: producers "can submit files but not read others' results unless also in the results group".
    assert machine.run("cat", f"{SPOOL}/results/alice.txt.jsonl", user="alice", check=False).returncode != 0, (
        "a member of ipspool-submit alone reads results: the tmpfiles.d file must make results/ and failed/ "
        "ipspool:ipspool 0750 (docs/packaging.md, Users, groups and permissions)")
    assert machine.run("ls", f"{SPOOL}/done", user="alice", check=False).returncode != 0
    # --wait needs to see the results: refused up front, nothing submitted.
    refused = machine.run("ipspool", "submit", "--wait", "--config", CONFIG, "/tmp/alice.txt", user="alice",
                          check=False)
    assert refused.returncode == 1
    assert "cannot observe results" in refused.stderr
    assert not machine.exists(f"{SPOOL}/results/alice.txt.1.jsonl")


def test_member_of_both_groups_waits_for_the_result(machine: Container) -> None:
    """bob (ipspool-submit and ipspool) submits with --wait, sees progress in lines, and reads his result."""
    machine.run("sh", "-c", "printf '198.51.100.7\\n2001:db8::1\\n' > /tmp/bob.txt", user="bob")
    waited = machine.run("ipspool", "submit", "--wait", "--timeout", "60", "--config", CONFIG, "/tmp/bob.txt",
                         user="bob")
    assert f"bob.txt: done {SPOOL}/results/bob.txt.jsonl" in waited.stdout
    assert "progress: 2/2 lines, 1/1 files done" in waited.stderr
    assert len(machine.run("cat", f"{SPOOL}/results/bob.txt.jsonl", user="bob").stdout.splitlines()) == 2


def test_systemctl_reload_applies_a_good_config_and_refuses_a_bad_one(machine: Container) -> None:
    """`systemctl reload` succeeds on a valid file; on an invalid one it fails and the service keeps running."""
    before = _journal_count(machine, "config.reloaded")
    pid = machine.main_pid(UNIT)
    machine.run("systemctl", "reload", UNIT)
    assert _journal_count(machine, "config.reloaded") == before + 1
    assert machine.main_pid(UNIT) == pid
    machine.run("cp", CONFIG, "/root/ipspool.toml.good")
    machine.run("sed", "-i", "s/^threads = 16$/threads = \"many\"/", CONFIG)
    statuses = _reload_statuses(machine)
    assert machine.run("systemctl", "reload", UNIT, check=False).returncode != 0
    # `ipspool reload` validates the file first: exit 78 (CONFIG_ERROR), nothing signalled.
    wait_for(lambda: len(_reload_statuses(machine)) > len(statuses), 30, 0.2, what="the ExecReload exit")
    assert _reload_statuses(machine)[len(statuses):] == [4]
    assert _journal_count(machine, "config.reload_failed") == 0
    assert machine.active(UNIT) == "active"
    assert machine.main_pid(UNIT) == pid
    machine.run("cp", "/root/ipspool.toml.good", CONFIG)


def test_upgrade_keeps_the_edited_config_and_restarts(machine: Container) -> None:
    """Installing VERSION-2 over VERSION-1 keeps an edited conffile and restarts the service on the new code."""
    machine.run("sed", "-i", "s/^threads = 16$/threads = 4/", CONFIG)
    machine.run("sh", "-c", f"echo '# edited by the operator' >> {CONFIG}")
    pid = machine.main_pid(UNIT)
    _install(machine, SECOND)
    version = machine.run("dpkg-query", "-W", "-f=${Version}", "ipspool").stdout
    assert version == SECOND
    config = machine.run("cat", CONFIG).stdout
    assert "# edited by the operator" in config
    assert tomllib.loads(config)["workers"]["threads"] == 4
    assert not machine.exists(CONFIG + ".dpkg-dist")
    wait_for(lambda: machine.active(UNIT) == "active", 60, 0.2, what="ipspool active after upgrade")
    assert machine.main_pid(UNIT) not in (0, pid)
    waited = machine.run("ipspool", "submit", "--wait", "--timeout", "60", "--config", CONFIG, "/tmp/bob.txt",
                         user="bob").stdout
    found = re.search(rf"bob\.txt\S*: done ({re.escape(SPOOL)}/results/\S+\.jsonl)", waited)
    assert found is not None, waited
    records = [json.loads(line) for line in machine.run("cat", found[1], user="bob").stdout.splitlines()]
    assert [(r["input"], r["version"]) for r in records] == [("198.51.100.7", 4), ("2001:db8::1", 6)]


def test_remove_stops_the_service_and_keeps_spool_and_config(machine: Container) -> None:
    """apt remove stops ipspool; the results, the spool, the config and the users stay."""
    machine.run("apt-get", "remove", "-y", "ipspool", timeout=180)
    assert machine.active(UNIT) in ("inactive", "unknown")
    # No process of the service user is left (minbase has no pgrep).
    assert machine.run("find", "/proc", "-maxdepth", "1", "-user", "ipspool").stdout == ""
    assert _inputs_of(machine, "alice.txt") == ["192.0.2.1", "not an address", "10.1.2.3"]
    assert _inputs_of(machine, "bob.txt") == ["198.51.100.7", "2001:db8::1"]
    assert machine.run("cat", f"{SPOOL}/done/alice.txt").stdout == "192.0.2.1\nnot an address\n10.1.2.3\n"
    assert "# edited by the operator" in machine.run("cat", CONFIG).stdout
    assert machine.run("getent", "passwd", "ipspool").stdout.startswith("ipspool:")


def test_purge_removes_the_config_but_not_the_data(machine: Container) -> None:
    """apt purge removes /etc/ipspool; the spool and results stay (docs/packaging.md)."""
    machine.run("apt-get", "purge", "-y", "ipspool", timeout=180)
    assert not machine.exists("/etc/ipspool")
    assert _inputs_of(machine, "alice.txt") == ["192.0.2.1", "not an address", "10.1.2.3"]
    gone = machine.run("dpkg-query", "-W", "ipspool", check=False)
    assert gone.returncode == 1 and "no packages found matching ipspool" in gone.stderr


def test_lintian_finds_no_errors(debs: dict[str, Path]) -> None:
    """lintian reports no error (E:) for the package; warnings are listed in docs/packaging.md."""
    if shutil.which("lintian") is None:
        pytest.skip("lintian is missing (apt-get install lintian)")
    result = subprocess.run(["lintian", "--no-tag-display-limit", str(debs[FIRST])], capture_output=True, text=True,
                            timeout=300, check=False)
    errors = [line for line in result.stdout.splitlines() if line.startswith("E:")]
    assert not errors, "\n".join(errors)
