"""The Debian package on fresh Debian 12 and Debian 13 roots: install, use, reload, upgrade, remove, purge.

packaging/build-deb.sh builds the package with dpkg-buildpackage inside a
clean build root of each release (VERSION-1 and VERSION-2, for the upgrade),
and runs that release's lintian on it; both releases build at once. A
minimal root of the release from debootstrap (cached for the day in
/var/cache/ipspool-test/, see debroot.py) is unpacked afresh, booted with
systemd-nspawn, and the package is installed with apt inside, offline. The
tests run in file order on that one machine, one release after the other:
each step starts from the state the previous one left, as an operator's
machine would.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import tomllib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from ipspool import __version__
from ipspool.cli import build_parser
from ipspool.exitcodes import ExitCode
from ipspool.tools.completion import script
from tests.support.container import Container
from tests.support.daemon import REPO, wait_for
from tests.support.debroot import RELEASES, cached_root, unpack

pytestmark = [pytest.mark.package, pytest.mark.timeout(1800)]

UNIT = "ipspool.service"
CONFIG = "/etc/ipspool/ipspool.toml"
DROPINS = "/etc/ipspool/conf.d"
SPOOL = "/var/spool/ipspool"
METRICS = f"{SPOOL}/ipspool.prom"
DEBS = "/var/cache/ipspool-debs"
FIRST, SECOND = f"{__version__}-1", f"{__version__}-2"
# Seconds both releases' builds may take together (cold: two debootstraps and pip).
BUILD_TIMEOUT = 1500

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
                          ("nsenter", "util-linux"), ("git", "git")):
        if shutil.which(tool) is None:
            return f"{tool} is missing (apt-get install {package})"
    return ""


class Builds:
    """Both releases' packaging/build-deb.sh runs, started together, each awaited when first needed."""

    def __init__(self, out: Path) -> None:
        self.out = out
        # The test roots bootstrap (on a cold cache) while the packages build.
        self.pool = ThreadPoolExecutor(len(RELEASES))
        self.roots = {release: self.pool.submit(cached_root, release, "test") for release in RELEASES}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.logs: dict[str, Path] = {}
        for release in RELEASES:
            self.logs[release] = out / f"build-{release}.log"
            with open(self.logs[release], "wb") as log:
                self.procs[release] = subprocess.Popen(
                    [str(REPO / "packaging" / "build-deb.sh"), release], stdout=log, stderr=subprocess.STDOUT,
                    env={**os.environ, "IPSPOOL_DEB_REVISIONS": "1 2", "IPSPOOL_DEB_OUT": str(out)},
                    start_new_session=True,  # its own process group: stop() ends the build and its nspawn
                )

    def debs(self, release: str) -> dict[str, Path]:
        proc = self.procs[release]
        proc.wait(BUILD_TIMEOUT)
        assert proc.returncode == 0, f"build-deb.sh {release} failed:\n{self.logs[release].read_text()[-4000:]}"
        return {version: next((self.out / release).glob(f"ipspool_{version}_*.deb")) for version in (FIRST, SECOND)}

    def test_root(self, release: str) -> Path:
        return self.roots[release].result(BUILD_TIMEOUT)

    def stop(self) -> None:
        self.pool.shutdown(wait=True)
        for proc in self.procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)  # the group of our own build-deb.sh, by its id
                proc.wait(30)


@pytest.fixture(scope="session")
def builds(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Builds]:
    reason = _missing()
    if reason:
        pytest.skip(reason)
    started = Builds(tmp_path_factory.mktemp("debs"))
    yield started
    started.stop()


@pytest.fixture(scope="module", params=list(RELEASES))
def release(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def debs(builds: Builds, release: str) -> dict[str, Path]:
    return builds.debs(release)


@pytest.fixture(scope="module")
def machine(builds: Builds, debs: dict[str, Path], release: str,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Container]:
    base = tmp_path_factory.mktemp(f"debian-{release}")
    root = base / "root"
    unpack(builds.test_root(release), root)
    (root / DEBS.lstrip("/")).mkdir(parents=True)
    for deb in debs.values():
        shutil.copy(deb, root / DEBS.lstrip("/") / deb.name)
    (root / "etc/sysusers.d").mkdir(parents=True, exist_ok=True)
    (root / "etc/sysusers.d/ipspool-test.conf").write_text(TEST_USERS)
    box = Container(root, f"ipspool-pkg-{release}-{os.getpid()}", base / "console.log")
    try:
        box.boot()
        yield box
    finally:
        box.poweroff()
        shutil.rmtree(root, ignore_errors=True)


def _install(box: Container, version: str) -> subprocess.CompletedProcess[str]:
    (deb,) = [name for name in box.run("ls", DEBS).stdout.split() if f"_{version}_" in name]
    return box.run("apt-get", "install", "-y", "--no-install-recommends", f"{DEBS}/{deb}", timeout=300)


def _result(box: Container, name: str, timeout: float = 60) -> list[dict[str, object]]:
    path = f"{SPOOL}/results/{name}.jsonl"
    wait_for(lambda: box.exists(path), timeout, 0.2, what=f"result {path}")
    return [json.loads(line) for line in box.run("cat", path).stdout.splitlines()]


def _inputs_of(box: Container, name: str) -> list[object]:
    return [json.loads(line)["input"] for line in box.run("cat", f"{SPOOL}/results/{name}.jsonl").stdout.splitlines()]


def _events(box: Container, event: str) -> list[dict[str, object]]:
    """The service's journal entries of one event, oldest first."""
    out = box.run("journalctl", "-u", UNIT, "-o", "cat", "--no-pager").stdout
    found = []
    for line in out.splitlines():
        try:
            entry = json.loads(line[line.index("{"):])
        except ValueError:
            continue
        if entry.get("event") == event:
            found.append(entry)
    return found


def _reload_statuses(box: Container) -> list[int]:
    """Exit statuses of every ExecReload so far, from systemd's own journal entries."""
    out = box.run("journalctl", "-u", UNIT, "-o", "json", "--no-pager").stdout
    entries = [json.loads(line) for line in out.splitlines() if line.strip()]
    return [int(e["EXIT_STATUS"]) for e in entries if e.get("COMMAND") == "ExecReload" and "EXIT_STATUS" in e]


def _unit_drop_in(box: Container, name: str, text: str | None) -> None:
    """Add (or with None remove) /etc/systemd/system/ipspool.service.d/NAME.conf, then daemon-reload."""
    path = f"/etc/systemd/system/{UNIT}.d/{name}.conf"
    if text is None:
        box.run("rm", "-f", path)
    else:
        box.run("mkdir", "-p", f"/etc/systemd/system/{UNIT}.d")
        box.run("sh", "-c", f"cat > {path}", stdin=text)
    box.run("systemctl", "daemon-reload")


def test_install_enables_and_starts_the_service(machine: Container, release: str) -> None:
    """apt installs the package offline; the service is enabled, active, and answers `ipspool status`."""
    _install(machine, FIRST)
    assert machine.run("systemctl", "is-enabled", UNIT).stdout.strip() == "enabled"
    wait_for(lambda: machine.active(UNIT) == "active", 60, 0.2, what="ipspool active after install")
    assert machine.run("getent", "group", "ipspool-submit").returncode == 0
    assert "ipspool-submit" in machine.run("id", "-nG", "ipspool").stdout.split()
    # The daemon publishes its state for `ipspool status` shortly after READY=1.
    wait_for(lambda: "State: running" in machine.run("ipspool", "status", "--config", CONFIG).stdout, 10, 0.2,
             what="ipspool status to say running")
    assert machine.run("ipspool", "--version", user="alice").stdout.strip() == f"ipspool {__version__}"
    python = machine.run("/usr/lib/ipspool/bin/python3", "-c", "import sys; print('%d.%d' % sys.version_info[:2])")
    assert python.stdout.strip() == RELEASES[release]
    page = machine.run("sh", "-c", "zcat /usr/share/man/man8/ipspool.8.gz").stdout
    assert page.startswith(".TH IPSPOOL 8 ") and f'"ipspool {__version__}"' in page.splitlines()[0]
    assert ".SH NAME" in page and "SIGHUP" in page
    completion = machine.run("cat", "/usr/share/bash-completion/completions/ipspool").stdout
    assert completion == script("bash", build_parser())
    zsh = machine.run("cat", "/usr/share/zsh/vendor-completions/_ipspool").stdout
    assert zsh == script("zsh", build_parser())
    copyright_ = machine.run("cat", "/usr/share/doc/ipspool/copyright").stdout
    assert "License: MIT" in copyright_ and "bundled in the virtualenv" in copyright_
    for shipped in ("prometheus/ipspool.rules.yml", "grafana/ipspool-dashboard.json"):
        installed = machine.run("cat", f"/usr/share/ipspool/{shipped}").stdout
        assert installed == (REPO / "packaging" / shipped).read_text(), shipped
    for installed, source in (("/usr/lib/sysusers.d/ipspool.conf", "ipspool.sysusers"),
                              ("/usr/lib/tmpfiles.d/ipspool.conf", "ipspool.tmpfiles")):
        assert machine.run("cat", installed).stdout == (REPO / "systemd" / source).read_text(), installed
    # The unit names this file in Documentation=: it must not be compressed away.
    assert machine.exists("/usr/share/doc/ipspool/systemd.md")


def test_the_conffile_is_short_and_the_example_is_documentation(machine: Container) -> None:
    """The conffile is systemd/ipspool.toml (packaged values only), the example is documentation, conf.d/ is empty."""
    assert machine.run("cat", CONFIG).stdout == (REPO / "systemd" / "ipspool.toml").read_text()
    conffiles = machine.run("sh", "-c", "cat /var/lib/dpkg/info/ipspool.conffiles").stdout.split()
    assert conffiles == [CONFIG]
    example = "/usr/share/doc/ipspool/examples/ipspool.toml"
    assert machine.run("cat", example).stdout == (REPO / "config" / "ipspool.toml").read_text()
    assert machine.run("find", DROPINS, "-mindepth", "1").stdout == ""
    owners = machine.run("dpkg-query", "-S", DROPINS).stdout
    assert owners.strip() == f"ipspool: {DROPINS}"


def test_status_with_no_flags_reports_the_running_service(machine: Container) -> None:
    """`ipspool status`, as the README shows it, finds /etc/ipspool/ipspool.toml by itself (config discovery)."""
    status = machine.run("ipspool", "status", check=False)
    assert status.returncode == ExitCode.OK, status.stderr
    assert "State: running" in status.stdout


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
    assert refused.returncode == ExitCode.FAILURE
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


def test_a_producer_subdirectory_made_by_the_sandboxed_service_takes_its_producers_files(
        machine: Container) -> None:
    """A drop-in names incoming/alice/ and a free-text rule for it; after `systemctl reload` the service (its own
    user, in its sandbox) has made it 3770 for ipspool-submit, alice submits into it, and bob cannot read it."""
    rule = '[spool]\nsubdirs = ["alice"]\n[[inputs]]\nsubdir = "alice"\nformat = "text"\n'
    machine.run("sh", "-c", f"cat > {DROPINS}/subdirs.toml", stdin=rule)
    try:
        machine.run("systemctl", "reload", UNIT)
        wait_for(lambda: machine.exists(f"{SPOOL}/incoming/alice"), 30, 0.2, what="incoming/alice")
        mode = machine.run("stat", "-c", "%a %U %G", f"{SPOOL}/incoming/alice").stdout.split()
        assert mode == ["3770", "ipspool", "ipspool-submit"]
        assert _events(machine, "spool.subdir_failed") == []
        machine.run("sh", "-c", "printf 'seen from 192.0.2.5 and 198.51.100.9:22 today\\n' > /tmp/note.txt",
                    user="alice")
        submitted = machine.run("ipspool", "submit", "--config", CONFIG, "--subdir", "alice", "/tmp/note.txt",
                                user="alice")
        assert "as incoming/alice/note.txt" in submitted.stdout
        records = _result(machine, "alice~note.txt")
        assert [(r["ip"], r["position"]) for r in records] == [("192.0.2.5", 11), ("198.51.100.9", 25)]
        # The producer group may write into it but another producer may not read what waits there.
        machine.run("sh", "-c", f"printf '192.0.2.6\\n' > {SPOOL}/incoming/alice/.pending", user="alice")
        assert machine.run("cat", f"{SPOOL}/incoming/alice/.pending", user="bob", check=False).returncode != 0
        machine.run("rm", "-f", f"{SPOOL}/incoming/alice/.pending")
    finally:
        machine.run("rm", "-f", f"{DROPINS}/subdirs.toml")
        machine.run("systemctl", "reload", UNIT)


def test_systemctl_reload_applies_a_good_config_and_refuses_a_bad_one(machine: Container) -> None:
    """`systemctl reload` succeeds on a valid file; on an invalid one it fails and the service keeps running."""
    before = len(_events(machine, "config.reloaded"))
    pid = machine.main_pid(UNIT)
    machine.run("systemctl", "reload", UNIT)
    assert len(_events(machine, "config.reloaded")) == before + 1
    assert machine.main_pid(UNIT) == pid
    machine.run("cp", CONFIG, "/root/ipspool.toml.good")
    machine.run("sh", "-c", f"printf '\\n[workers]\\nthreads = \"many\"\\n' >> {CONFIG}")
    statuses = _reload_statuses(machine)
    assert machine.run("systemctl", "reload", UNIT, check=False).returncode != 0
    # `ipspool reload` validates the file first: CONFIG_ERROR, nothing signalled.
    wait_for(lambda: len(_reload_statuses(machine)) > len(statuses), 30, 0.2, what="the ExecReload exit")
    assert _reload_statuses(machine)[len(statuses):] == [ExitCode.CONFIG_ERROR]
    assert _events(machine, "config.reload_failed") == []
    assert machine.active(UNIT) == "active"
    assert machine.main_pid(UNIT) == pid
    machine.run("cp", "/root/ipspool.toml.good", CONFIG)


def test_a_drop_in_changes_a_value_and_systemctl_reload_applies_it(machine: Container) -> None:
    """/etc/ipspool/conf.d/local.toml sets workers.processes; after `systemctl reload` that many workers run."""
    machine.run("systemctl", "reload", UNIT)
    workers = len(_events(machine, "config.reloaded")[-1]["workers"])  # type: ignore[arg-type]
    machine.run("sh", "-c", f"cat > {DROPINS}/local.toml", stdin=f"[workers]\nprocesses = {workers + 1}\n")
    try:
        before = len(_events(machine, "config.reloaded"))
        machine.run("systemctl", "reload", UNIT)
        reloaded = _events(machine, "config.reloaded")[before:]
        assert [(e["mode"], len(e["workers"])) for e in reloaded] == [("replace", workers + 1)]  # type: ignore[arg-type]
    finally:
        machine.run("rm", "-f", f"{DROPINS}/local.toml")
        machine.run("systemctl", "reload", UNIT)


def test_a_bad_config_shows_its_exit_code_by_name_in_systemctl_status(machine: Container) -> None:
    """A restart on an invalid file fails with CONFIG_ERROR, which systemd names (status=78/CONFIG); no restart loop."""
    machine.run("cp", CONFIG, "/root/ipspool.toml.good")
    machine.run("sh", "-c", f"printf '\\n[workers]\\nthreads = \"many\"\\n' >> {CONFIG}")
    restarts = machine.run("systemctl", "show", "--value", "--property=NRestarts", UNIT).stdout.strip()
    try:
        assert machine.run("systemctl", "restart", UNIT, check=False).returncode != 0
        wait_for(lambda: machine.active(UNIT) == "failed", 30, 0.2, what="ipspool failed on a bad config")
        status = machine.run("systemctl", "status", "--no-pager", UNIT, check=False).stdout
        assert f"status={int(ExitCode.CONFIG_ERROR)}/CONFIG" in status, status
        # RestartPreventExitStatus=: a bad file does not fix itself.
        assert machine.run("systemctl", "show", "--value", "--property=NRestarts", UNIT).stdout.strip() == restarts
    finally:
        machine.run("cp", "/root/ipspool.toml.good", CONFIG)
        machine.run("systemctl", "reset-failed", UNIT, check=False)
        machine.run("systemctl", "start", UNIT)
    wait_for(lambda: machine.active(UNIT) == "active", 60, 0.2, what="ipspool active again")


def test_after_kill_9_the_metrics_no_longer_say_up(machine: Container) -> None:
    """SIGKILL to the main process: the metrics file stops saying ipspool_up 1 (the unit marks it down)."""
    # No restart for this test, so what is read is what the dead process left.
    _unit_drop_in(machine, "50-test-no-restart", "[Service]\nRestart=no\n")
    machine.run("cp", CONFIG, "/root/ipspool.toml.good")
    machine.run("sh", "-c", f"printf '\\n[metrics]\\ntextfile = \"{METRICS}\"\\ninterval = 1.0\\n' >> {CONFIG}")
    try:
        machine.run("systemctl", "restart", UNIT)
        up = re.compile(r"^ipspool_up 1(\.0)?$", re.MULTILINE)
        wait_for(lambda: up.search(machine.run("cat", METRICS, check=False).stdout) is not None, 30, 0.2,
                 what="the metrics file to say ipspool_up 1")
        machine.run("sh", "-c", f"kill -9 {machine.main_pid(UNIT)}")  # minbase has no /bin/kill
        wait_for(lambda: machine.active(UNIT) in ("failed", "inactive"), 60, 0.2, what="ipspool to stop")
        assert up.search(machine.run("cat", METRICS, check=False).stdout) is None
    finally:
        machine.run("cp", "/root/ipspool.toml.good", CONFIG)
        _unit_drop_in(machine, "50-test-no-restart", None)
        machine.run("systemctl", "reset-failed", UNIT, check=False)
        machine.run("systemctl", "start", UNIT)
    wait_for(lambda: machine.active(UNIT) == "active", 60, 0.2, what="ipspool active again")


def test_upgrade_keeps_the_edited_config_without_a_prompt_and_restarts(machine: Container) -> None:
    """Installing VERSION-2 over VERSION-1 keeps an edited conffile, asks nothing, and restarts on the new code."""
    machine.run("sh", "-c", f"printf '\\n# edited by the operator\\n[workers]\\nthreads = 4\\n' >> {CONFIG}")
    pid = machine.main_pid(UNIT)
    upgrade = _install(machine, SECOND)
    assert "Configuration file" not in upgrade.stdout + upgrade.stderr  # dpkg's conffile question
    version = machine.run("dpkg-query", "-W", "-f=${Version}", "ipspool").stdout
    assert version == SECOND
    config = machine.run("cat", CONFIG).stdout
    assert "# edited by the operator" in config
    assert tomllib.loads(config)["workers"]["threads"] == 4
    assert machine.run("find", "/etc/ipspool", "-name", "*.dpkg-*").stdout == ""
    wait_for(lambda: machine.active(UNIT) == "active", 60, 0.2, what="ipspool active after upgrade")
    assert machine.main_pid(UNIT) not in (0, pid)
    waited = machine.run("ipspool", "submit", "--wait", "--timeout", "60", "--config", CONFIG, "/tmp/bob.txt",
                         user="bob").stdout
    found = re.search(rf"bob\.txt\S*: done ({re.escape(SPOOL)}/results/\S+\.jsonl)", waited)
    assert found is not None, waited
    records = [json.loads(line) for line in machine.run("cat", found[1], user="bob").stdout.splitlines()]
    assert [(r["input"], r["version"]) for r in records] == [("198.51.100.7", 4), ("2001:db8::1", 6)]


def test_remove_stops_the_service_and_keeps_spool_and_config(machine: Container) -> None:
    """apt remove stops ipspool; the results, the spool, the config, the operator's own files and the users stay."""
    # What an operator adds beside the conffile: a CIDR list and a drop-in.
    machine.run("mkdir", "-p", "/etc/ipspool/lists")
    machine.run("sh", "-c", "echo 192.0.2.0/24 > /etc/ipspool/lists/mine.txt")
    machine.run("sh", "-c", f"printf '[workers]\\nthreads = 8\\n' > {DROPINS}/local.toml")
    machine.run("apt-get", "remove", "-y", "ipspool", timeout=300)
    assert machine.active(UNIT) in ("inactive", "unknown")
    # No process of the service user is left (minbase has no pgrep).
    assert machine.run("find", "/proc", "-maxdepth", "1", "-user", "ipspool").stdout == ""
    assert _inputs_of(machine, "alice.txt") == ["192.0.2.1", "not an address", "10.1.2.3"]
    assert _inputs_of(machine, "bob.txt") == ["198.51.100.7", "2001:db8::1"]
    assert machine.run("cat", f"{SPOOL}/done/alice.txt").stdout == "192.0.2.1\nnot an address\n10.1.2.3\n"
    assert "# edited by the operator" in machine.run("cat", CONFIG).stdout
    assert machine.run("getent", "passwd", "ipspool").stdout.startswith("ipspool:")
    assert not machine.exists("/usr/lib/ipspool")
    assert machine.run("cat", "/etc/ipspool/lists/mine.txt").stdout == "192.0.2.0/24\n"
    assert machine.run("cat", f"{DROPINS}/local.toml").stdout == "[workers]\nthreads = 8\n"


def test_purge_removes_what_the_package_installed_and_leaves_operator_files(machine: Container) -> None:
    """apt purge removes the conffile and systemd's record; lists, drop-ins, the spool and results stay."""
    machine.run("apt-get", "purge", "-y", "ipspool", timeout=300)
    assert not machine.exists(CONFIG)
    assert machine.run("cat", "/etc/ipspool/lists/mine.txt").stdout == "192.0.2.0/24\n"
    assert machine.run("cat", f"{DROPINS}/local.toml").stdout == "[workers]\nthreads = 8\n"
    assert machine.run("find", "/etc/ipspool", "-type", "f").stdout.split() == sorted(
        ["/etc/ipspool/conf.d/local.toml", "/etc/ipspool/lists/mine.txt"])
    assert not machine.exists(f"/etc/systemd/system/multi-user.target.wants/{UNIT}")
    assert _inputs_of(machine, "alice.txt") == ["192.0.2.1", "not an address", "10.1.2.3"]
    gone = machine.run("dpkg-query", "-W", "ipspool", check=False)
    assert gone.returncode == 1 and "no packages found matching ipspool" in gone.stderr


def test_lintian_of_the_release_finds_no_errors(builds: Builds, debs: dict[str, Path], release: str) -> None:
    """The release's own lintian (run in its build root by build-deb.sh) reports no error (E:) for the package."""
    report = (builds.out / release / "lintian.txt").read_text()
    assert "lintian exit: 0" in report, report[-3000:]
    errors = [line for line in report.splitlines() if line.startswith("E:")]
    assert not errors, "\n".join(errors)
