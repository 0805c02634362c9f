"""Config discovery and drop-ins against the real daemon: no flags needed, conf.d/ applied by reload, -v/-q."""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from pathlib import Path

from ipspool.configfiles import CONFIG_ENV, SYSTEM_DIR_ENV
from ipspool.exitcodes import ExitCode
from tests.support.daemon import Daemon


def _system(d: Daemon) -> dict[str, str]:
    """The environment in which d's own ipspool.toml is "/etc/ipspool/ipspool.toml"."""
    return {SYSTEM_DIR_ENV: str(d.root)}


def _dropin(d: Daemon, name: str, text: str) -> Path:
    (d.root / "conf.d").mkdir(exist_ok=True)
    path = d.root / "conf.d" / name
    path.write_text(text)
    return path


def test_every_command_finds_the_system_configuration_without_flags(make_daemon: Callable[..., Daemon]) -> None:
    """run, status, submit, check-config and reload with no --config all use /etc/ipspool/ipspool.toml."""
    d = make_daemon()
    env = _system(d)
    d.start(env=env, args=["run"])
    status = d.ipspool("status", "--json", env=env)
    assert status.returncode == ExitCode.OK, status.stderr
    assert json.loads(status.stdout)["daemon"]["config"] == str(d.config_path)
    source = d.root / "list.txt"
    source.write_text("192.0.2.7\n")
    submitted = d.ipspool("submit", "--wait", "--timeout", "60", "--json", str(source), env=env)
    assert submitted.returncode == ExitCode.OK, submitted.stderr
    report = json.loads(submitted.stdout)
    assert report["ok"] is True and [f["state"] for f in report["files"]] == ["done"]
    assert set(report["files"][0]) == {"source", "name", "lines", "state", "where"}
    checked = d.ipspool("check-config", env=env)
    assert checked.returncode == ExitCode.OK and f"{d.config_path} (found by system)" in checked.stdout
    reloaded = d.ipspool("reload", env=env)
    assert reloaded.returncode == ExitCode.OK, reloaded.stderr
    # Without the system file (and without flags) the same commands look at the defaults' spool.
    assert d.ipspool("status").returncode == ExitCode.NOT_RUNNING
    assert d.ipspool("status", env={CONFIG_ENV: str(d.config_path)}).returncode == ExitCode.OK
    assert d.stop() == ExitCode.OK


def test_a_dropin_is_applied_by_reload_and_a_bad_one_is_refused_naming_its_file(
    make_daemon: Callable[..., Daemon],
) -> None:
    """conf.d/10-workers.toml changes workers.processes on reload; a bad drop-in is named in the refusal."""
    d = make_daemon()
    env = _system(d)
    d.start(env=env, args=["run"])
    _dropin(d, "10-workers.toml", "[workers]\nprocesses = 1\n")
    out = d.ipspool("reload", env=env)
    assert out.returncode == ExitCode.OK, out.stderr
    assert d.wait_event("config.reloading")["processes"] == 1
    assert d.wait_event("config.reloaded", where=lambda e: e["mode"] == "replace")
    _dropin(d, "20-bad.toml", "[workers]\nthreads = 0\n")
    refused = d.ipspool("reload", env=env)
    assert refused.returncode == ExitCode.CONFIG_ERROR  # reload validates before it signals
    assert f"{d.config_path}: conf.d/20-bad.toml: workers.threads: Input should be greater than 0" in refused.stderr
    d.signal(signal.SIGHUP)  # as a careless operator would: the daemon reads conf.d/ itself and refuses
    failed = d.wait_event("config.reload_failed")
    assert any(p.startswith("conf.d/20-bad.toml: workers.threads:") for p in failed["problems"]), failed
    d.drop("after.txt", "198.51.100.1\n")
    assert d.wait_result("after.txt")[0]["ip"] == "198.51.100.1"
    assert d.stop() == ExitCode.OK


def test_names_in_conf_d_that_are_not_toml_are_logged_and_ignored(make_daemon: Callable[..., Daemon]) -> None:
    """config.dropin_ignored (warning) names each skipped file at start; the daemon runs on the rest."""
    d = make_daemon()
    _dropin(d, "10-workers.toml.dpkg-old", "[workers]\nprocesses = 99999\n")
    d.start()
    ignored = d.wait_event("config.dropin_ignored")
    assert ignored["level"] == "warning" and ignored["reason"] == "not a .toml file"
    assert ignored["file"] == str(d.root / "conf.d" / "10-workers.toml.dpkg-old")
    assert d.stop() == ExitCode.OK


def test_run_verbosity_flags_override_log_level_across_reloads(make_daemon: Callable[..., Daemon]) -> None:
    """log.level = "error" in the file; `run -v` logs info and debug events, also after a reload."""
    d = make_daemon(log={"level": "error"})
    d.start(args=["run", "-v", "--config", str(d.config_path)])
    d.drop("one.txt", "192.0.2.1\n")
    d.wait_result("one.txt")
    assert d.wait_event("chunk.done")["level"] == "debug"
    d.write_config(log={"level": "error"}, workers={"processes": 1})
    d.signal(signal.SIGHUP)
    d.wait_event("config.reloaded", where=lambda e: e["mode"] == "replace")
    d.drop("two.txt", "192.0.2.2\n")
    d.wait_result("two.txt")
    assert d.wait_event("chunk.done", where=lambda e: e["file"] == "two.txt")
    assert d.stop() == ExitCode.OK


def test_run_quiet_logs_warnings_only(make_daemon: Callable[..., Daemon]) -> None:
    """`run -q` over log.level = "debug": no info event, but warnings (an ignored drop-in) still."""
    d = make_daemon()
    _dropin(d, "README", "")
    d.start(wait_ready=False, args=["run", "-q", "--config", str(d.config_path)])
    d.wait_event("config.dropin_ignored", after_start=True)
    d.drop("one.txt", "192.0.2.1\n")
    d.wait_result("one.txt")
    assert d.stop() == ExitCode.OK
    assert {e["level"] for e in d.events()} <= {"warning", "error", "critical"}
