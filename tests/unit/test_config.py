"""Configuration: defaults, validation messages, the example file."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import get_args

import pytest

from ipspool.cli import main
from ipspool.config import Config, ConfigError, load_config, parse_config
from ipspool.exitcodes import ExitCode
from ipspool.pipeline import load_pipeline
from tests.support.daemon import REPO

EXAMPLE = REPO / "config" / "ipspool.toml"


def test_defaults_match_the_documented_contract() -> None:
    """The built-in defaults are the values the issue and docs promise."""
    config = load_config(None)
    assert config.spool.dir == "/var/spool/ipspool"
    assert config.results_dir == Path("/var/spool/ipspool/results")
    assert config.workers.processes == 0 and config.process_count >= 1
    assert config.workers.threads == 16
    assert config.workers.chunk_bytes == 1048576
    assert config.pipeline.stages == ("classify",)
    assert config.log.level == "info"


def test_example_file_is_valid_and_equals_the_defaults() -> None:
    """config/ipspool.toml parses, validates, and carries exactly the defaults."""
    with open(EXAMPLE, "rb") as handle:
        data = tomllib.load(handle)
    assert parse_config(data, str(EXAMPLE)) == Config()


def test_example_file_documents_every_key() -> None:
    """Every declared key appears in the example file (so operators can find it)."""
    text = EXAMPLE.read_text()
    for section_name, field in Config.model_fields.items():
        if section_name in ("lists", "inputs"):
            assert f"[[{section_name}]]" in text
            model = get_args(field.annotation)[0]
            for key in model.model_fields:
                assert f"\n# {key} =" in text, f"{section_name}.{key}"
            continue
        section = field.annotation
        assert f"[{section_name}]" in text, section_name
        for key in section.model_fields:  # type: ignore[union-attr]
            assert f"\n{key} =" in text or f"\n# {key} =" in text, f"{section_name}.{key}"


def test_unknown_key_is_named() -> None:
    """A typo is an error naming the key, never silently ignored."""
    with pytest.raises(ConfigError) as info:
        parse_config({"workers": {"thread": 4}}, "x.toml")
    assert "workers.thread: unknown key" in str(info.value)
    assert str(info.value).startswith("x.toml: ")


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"workers": {"threads": "4"}}, "workers.threads"),
        ({"workers": {"threads": 0}}, "workers.threads"),
        ({"workers": {"processes": -1}}, "workers.processes"),
        ({"workers": {"chunk_bytes": 10}}, "workers.chunk_bytes"),
        ({"workers": {"max_attempts": 0}}, "workers.max_attempts"),
        ({"workers": {"graceful_timeout": -1.0}}, "workers.graceful_timeout"),
        ({"spool": {"dir": 5}}, "spool.dir"),
        ({"spool": {"dir": ""}}, "spool.dir"),
        ({"spool": {"keep_processed": "yes"}}, "spool.keep_processed"),
        ({"pipeline": {"stages": "classify"}}, "pipeline.stages"),
        ({"log": {"level": "loud"}}, "log.level"),
        ({"lists": [{"name": "x"}]}, "lists.0.path"),
        ({"spool": []}, "spool"),
    ],
)
def test_wrong_values_name_the_key(data: dict[str, object], key: str) -> None:
    """Wrong types, zero or negative counts and missing keys name the key."""
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    assert any(p.startswith(key + ":") for p in info.value.problems), info.value.problems


def test_every_problem_is_reported_at_once() -> None:
    """Several mistakes give several problems, not just the first."""
    with pytest.raises(ConfigError) as info:
        parse_config({"workers": {"threads": 0, "processes": "x"}, "log": {"level": "x"}})
    assert len(info.value.problems) == 3


def test_bad_toml_and_missing_file(tmp_path: Path) -> None:
    """Unreadable sources say what is wrong with the file itself."""
    bad = tmp_path / "bad.toml"
    bad.write_text("[workers\nthreads = ")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(tmp_path)


def test_spool_override_wins() -> None:
    """--spool replaces spool.dir and moves the derived directories with it."""
    config = parse_config({"spool": {"dir": "/a"}}, spool="/b")
    assert config.spool_dir == Path("/b")
    assert config.results_dir == Path("/b/results")
    assert config.runtime_dir == Path("/b/.ipspool")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("nosuchmodule_xyz:f", "cannot import module 'nosuchmodule_xyz'"),
        ("tests.support.stagelib:missing", "has no attribute 'missing'"),
        ("tests.support.stagelib:not_callable", "not a callable"),
        ("tests.support.stagelib:holder.method", "cannot be sent to worker processes"),
        ("tests.support.stagelib:closure", "cannot be sent to worker processes"),
        ("nocolon", "expected a built-in name"),
    ],
)
def test_unloadable_stage_is_a_config_error(spec: str, message: str) -> None:
    """A stage that cannot be imported or pickled is a clear ConfigError."""
    with pytest.raises(ConfigError) as info:
        load_pipeline(parse_config({"pipeline": {"stages": ["classify", spec]}}))
    problem = info.value.problems[0]
    assert problem.startswith(f"pipeline.stages[1] ({spec}):")
    assert message in problem
    assert "Traceback" not in problem


def test_check_config_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """check-config exits 0 on a good file and 4 listing every problem on a bad one."""
    good = tmp_path / "good.toml"
    good.write_text('[spool]\ndir = "/tmp/x"\n')
    assert main(["check-config", "--config", str(good)]) == ExitCode.OK
    assert "OK" in capsys.readouterr().out
    bad = tmp_path / "bad.toml"
    bad.write_text('[workers]\nthreads = -1\n[pipeline]\nstages = ["tests.support.stagelib:holder.method"]\n')
    assert main(["check-config", "--config", str(bad)]) == ExitCode.CONFIG_ERROR
    err = capsys.readouterr().err
    assert "workers.threads" in err


def test_configuration_reference_is_generated_from_the_declarations() -> None:
    """docs/configuration.md is exactly what `python -m ipspool.tools.configdoc` renders."""
    from ipspool.tools.configdoc import render

    assert (REPO / "docs" / "configuration.md").read_text() == render(), (
        "regenerate with: python -m ipspool.tools.configdoc > docs/configuration.md"
    )
