"""Where the configuration comes from: the discovery rule, conf.d/ drop-ins, their merge and their problems."""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path

import pytest

from ipspool.cli import main
from ipspool.config import ConfigError, load_config, load_for
from ipspool.configfiles import CONFIG_ENV, SYSTEM_DIR_ENV, discover, dump_toml, read_layers
from ipspool.exitcodes import ExitCode
from tests.support.daemon import REPO

MAIN = ('[spool]\ndir = "/srv/spool"\n[workers]\nthreads = 4\nprocesses = 2\n'
        '[pipeline]\nstages = ["classify", "lists"]\n')


@pytest.fixture
def etc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A stand-in for /etc/ipspool (the real one is never looked at), empty to begin with."""
    directory = tmp_path / "etc-ipspool"
    directory.mkdir()
    monkeypatch.setenv(SYSTEM_DIR_ENV, str(directory))
    monkeypatch.delenv(CONFIG_ENV, raising=False)
    return directory


def _dropin(etc: Path, name: str, text: str) -> Path:
    (etc / "conf.d").mkdir(exist_ok=True)
    path = etc / "conf.d" / name
    path.write_text(text)
    return path


def test_discovery_order_is_flag_then_environment_then_system_file_then_defaults(
    etc: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """--config beats $IPSPOOL_CONFIG, which beats /etc/ipspool/ipspool.toml, which beats the defaults."""
    assert discover(None).path is None and discover(None).origin == "defaults"
    system = etc / "ipspool.toml"
    system.write_text(MAIN)
    assert discover(None).path == system and discover(None).origin == "system"
    env_file = tmp_path / "env.toml"
    monkeypatch.setenv(CONFIG_ENV, str(env_file))
    assert discover(None).path == env_file and discover(None).origin == "$IPSPOOL_CONFIG"
    assert discover("flag.toml").path == Path("flag.toml").absolute() and discover("flag.toml").origin == "--config"


def test_an_explicit_file_that_is_missing_is_an_error_not_a_fallback(
    etc: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """$IPSPOOL_CONFIG naming no file fails (CONFIG_ERROR), even with a system file present."""
    (etc / "ipspool.toml").write_text(MAIN)
    monkeypatch.setenv(CONFIG_ENV, str(etc / "typo.toml"))
    with pytest.raises(ConfigError) as info:
        load_for(None)
    assert info.value.source == str(etc / "typo.toml") and info.value.problems == ("file not found",)


def test_every_command_uses_the_system_file(etc: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """With no flag, check-config reads /etc/ipspool/ipspool.toml and says which file it loaded and why."""
    (etc / "ipspool.toml").write_text('[spool]\ndir = "/nonexistent-spool"\n')
    assert load_for(None).config.spool.dir == "/nonexistent-spool"
    assert main(["check-config", "--show", "--json"]) == ExitCode.OK
    assert json.loads(capsys.readouterr().out)["spool"]["dir"] == "/nonexistent-spool"


def test_dropins_merge_in_name_order_tables_by_key_arrays_whole(etc: Path) -> None:
    """Tables merge key by key; a later drop-in wins; an array (stages, [[lists]]) is replaced, not appended."""
    main_file = etc / "ipspool.toml"
    main_file.write_text(MAIN + '[[lists]]\nname = "a"\npath = "/a"\n')
    _dropin(etc, "20-late.toml", "[workers]\nthreads = 8\n")
    _dropin(etc, "10-early.toml", '[workers]\nthreads = 6\n[pipeline]\nstages = ["classify"]\n'
                                  '[[lists]]\nname = "b"\npath = "/b"\n')
    loaded = load_for(None)
    config = loaded.config
    assert config.workers.threads == 8 and config.workers.processes == 2  # merged, not replaced
    assert config.spool.dir == "/srv/spool"
    assert config.pipeline.stages == ("classify",)
    assert [item.name for item in config.lists] == ["b"]
    assert loaded.files == (main_file, etc / "conf.d" / "10-early.toml", etc / "conf.d" / "20-late.toml")


def test_a_problem_in_a_dropin_names_the_dropin_and_the_key(etc: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`conf.d/10-threads.toml: workers.threads: ...`; a problem of the main file keeps its old form."""
    (etc / "ipspool.toml").write_text(MAIN + "[alerts]\nbacklog_files = -1\n")
    _dropin(etc, "10-threads.toml", "[workers]\nthreads = 0\nthredas = 1\n")
    with pytest.raises(ConfigError) as info:
        load_for(None)
    problems = info.value.problems
    assert any(p.startswith("conf.d/10-threads.toml: workers.threads: Input should be greater than 0")
               for p in problems), problems
    assert "conf.d/10-threads.toml: workers.thredas: unknown key" in " ".join(problems)
    assert any(p.startswith("alerts.backlog_files:") for p in problems), problems
    assert main(["check-config"]) == ExitCode.CONFIG_ERROR
    assert f"{etc / 'ipspool.toml'}: conf.d/10-threads.toml: workers.threads" in capsys.readouterr().err


def test_every_unreadable_dropin_is_listed_at_once(etc: Path) -> None:
    """Bad TOML, bad UTF-8, a directory and a dangling link named *.toml: one error naming each file."""
    (etc / "ipspool.toml").write_text(MAIN)
    _dropin(etc, "10-broken.toml", "[workers\n")
    (etc / "conf.d" / "20-latin1.toml").write_bytes(b'[spool]\ndir = "/caf\xe9"\n')
    (etc / "conf.d" / "30-dir.toml").mkdir()
    (etc / "conf.d" / "40-gone.toml").symlink_to(etc / "nowhere.toml")
    with pytest.raises(ConfigError) as info:
        load_for(None)
    text = "\n".join(info.value.problems)
    assert "conf.d/10-broken.toml: not valid TOML" in text
    assert "conf.d/20-latin1.toml: not valid UTF-8" in text
    assert "conf.d/30-dir.toml: is a directory" in text
    assert "conf.d/40-gone.toml: file not found (a dangling symbolic link?)" in text


def test_a_fifo_named_like_a_dropin_is_refused_without_blocking(etc: Path) -> None:
    """A FIFO is opened non-blocking and refused as not a regular file (nobody ever writes to it here)."""
    (etc / "ipspool.toml").write_text(MAIN)
    (etc / "conf.d").mkdir()
    os.mkfifo(etc / "conf.d" / "50-pipe.toml")
    with pytest.raises(ConfigError) as info:
        load_for(None)
    assert info.value.problems == ("conf.d/50-pipe.toml: not a regular file (a FIFO), expected a TOML file",)


def test_an_unreadable_dropin_is_an_error_naming_it(etc: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """EACCES on a drop-in (simulated: the suite may run as root) is a ConfigError, not a silent skip."""
    (etc / "ipspool.toml").write_text(MAIN)
    secret = _dropin(etc, "60-secret.toml", "[workers]\nthreads = 2\n")
    real_open = os.open

    def refusing(path: object, flags: int, *args: int) -> int:
        if Path(str(path)) == secret:
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", refusing)
    with pytest.raises(ConfigError) as info:
        read_layers(etc / "ipspool.toml")
    assert info.value.problems == ("conf.d/60-secret.toml: permission denied (is it readable by the service user?)",)


def test_other_names_in_conf_d_are_ignored_with_a_warning(etc: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """ipspool.toml.dpkg-old, README, backups: not read, reported; hidden files are skipped silently."""
    (etc / "ipspool.toml").write_text(MAIN)
    _dropin(etc, "10-threads.toml.dpkg-old", "[workers]\nthreads = 999999\n")
    _dropin(etc, "README", "not toml at all [")
    _dropin(etc, ".10-threads.toml.swp", "\0\0")
    loaded = load_for(None)
    assert loaded.config.workers.threads == 4
    assert [(i.path.name, i.reason) for i in loaded.ignored] == [
        ("10-threads.toml.dpkg-old", "not a .toml file"), ("README", "not a .toml file")]
    assert main(["check-config", "--show"]) == ExitCode.OK
    assert "threads = 4" in capsys.readouterr().out


def test_conf_d_that_is_a_file_is_an_error(etc: Path) -> None:
    """conf.d must be a directory when it exists."""
    (etc / "ipspool.toml").write_text(MAIN)
    (etc / "conf.d").write_text("")
    with pytest.raises(ConfigError) as info:
        load_for(None)
    assert info.value.problems[0].startswith("conf.d: not a directory")


def test_defaults_have_no_dropins(etc: Path) -> None:
    """Without a main file nothing in any conf.d/ is read, even beside where the system file would be."""
    _dropin(etc, "10-threads.toml", "[workers]\nthreads = 3\n")
    loaded = load_for(None)
    assert loaded.found.path is None and loaded.files == () and loaded.config.workers.threads == 16


def test_load_config_reads_the_dropins_of_an_explicit_file(tmp_path: Path) -> None:
    """load_config(path), as reload uses it, merges the conf.d/ beside that file."""
    main_file = tmp_path / "mine.toml"
    main_file.write_text(MAIN)
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "conf.d" / "10.toml").write_text("[workers]\nthreads = 5\n")
    assert load_config(main_file).workers.threads == 5


def test_check_config_reports_the_files_it_loaded(etc: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Text and --json name the main file, how it was found, each drop-in and each ignored name."""
    (etc / "ipspool.toml").write_text(f'[spool]\ndir = "{etc / "spool"}"\n')
    _dropin(etc, "10-threads.toml", "[workers]\nthreads = 3\n")
    _dropin(etc, "notes.txt", "")
    assert main(["check-config"]) == ExitCode.OK
    out, err = capsys.readouterr()
    assert f"configuration: {etc / 'ipspool.toml'} (found by system)" in out
    assert f"drop-in: {etc / 'conf.d' / '10-threads.toml'}" in out
    assert f"ignored: {etc / 'conf.d' / 'notes.txt'} (not a .toml file)" in err
    assert main(["check-config", "--json"]) == ExitCode.OK
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is True and report["found_by"] == "system"
    assert report["files"] == [str(etc / "ipspool.toml"), str(etc / "conf.d" / "10-threads.toml")]
    assert report["ignored"] == [{"file": str(etc / "conf.d" / "notes.txt"), "reason": "not a .toml file"}]
    assert set(report) == {"ok", "config", "found_by", "files", "ignored", "stages", "executor", "spool", "notes"}
    assert report["notes"] == []


def test_check_config_notes_a_rule_whose_subdirectory_is_in_no_spool_subdirs(
        etc: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A typo in a rule's subdir is a note (the directory may be made by tmpfiles.d), not an error."""
    (etc / "ipspool.toml").write_text(
        f'[spool]\ndir = "{etc / "spool"}"\nsubdirs = ["firewall", "fw-eu"]\n'
        '[[inputs]]\nsubdir = "firewal"\nformat = "text"\n'
        '[[inputs]]\nsubdir = "fw-*"\nformat = "text"\n'
        '[[inputs]]\nsubdir = ""\nformat = "text"\n')
    assert main(["check-config"]) == ExitCode.OK
    _, err = capsys.readouterr()
    note = ("inputs.0.subdir: 'firewal' matches none of spool.subdirs ['firewall', 'fw-eu']; "
            "the rule applies only to a directory made otherwise")
    assert err.splitlines() == [f"  note: {note}"]
    assert main(["check-config", "--json"]) == ExitCode.OK
    assert json.loads(capsys.readouterr().out)["notes"] == [note]


def test_check_config_json_reports_problems_on_stdout(etc: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--json on a bad configuration: {"ok": false, "config", "problems"} and CONFIG_ERROR."""
    (etc / "ipspool.toml").write_text("[workers]\nthreads = -1\n")
    assert main(["check-config", "--json"]) == ExitCode.CONFIG_ERROR
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is False and report["config"] == str(etc / "ipspool.toml")
    assert report["problems"][0].startswith("workers.threads:")


def test_show_prints_the_merged_settings_as_toml_and_json(etc: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--show is TOML that reads back to the merged, defaulted settings; --show --json is the same as JSON."""
    (etc / "ipspool.toml").write_text(MAIN + '[[lists]]\nname = "odd"\npath = "/l\\u007f\\"\\\\\\nx"\n')
    _dropin(etc, "10-threads.toml", "[workers]\nthreads = 3\n")
    expected = load_for(None).config.model_dump(mode="json")
    assert expected["workers"]["threads"] == 3 and expected["lists"][0]["path"] == '/l\x7f"\\\nx'
    assert main(["check-config", "--show"]) == ExitCode.OK
    assert tomllib.loads(capsys.readouterr().out) == expected
    assert main(["check-config", "--show", "--json"]) == ExitCode.OK
    assert json.loads(capsys.readouterr().out) == expected


def test_dump_toml_round_trips_the_example_configuration() -> None:
    """The TOML writer reads back equal for the shipped example (every section, [[lists]] absent)."""
    data = tomllib.loads((REPO / "config" / "ipspool.toml").read_text())
    assert tomllib.loads(dump_toml(data)) == data
