"""Configuration error messages, word for word: they are what an operator reads."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ipspool import configfiles
from ipspool.config import ConfigError, load_config, parse_config, usable_cpus


def message(path: object, **kwargs: object) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, **kwargs)  # type: ignore[arg-type]
    return str(info.value)


def test_each_unreadable_file_is_named_with_what_is_wrong(tmp_path: Path) -> None:
    """Missing, a directory, not TOML, not UTF-8: one line, the file first."""
    assert message(tmp_path / "gone.toml") == f"{tmp_path / 'gone.toml'}: file not found"
    assert message(tmp_path) == f"{tmp_path}: is a directory, expected a TOML file"
    bad = tmp_path / "bad.toml"
    bad.write_text("[workers\n")
    assert message(bad).startswith(f"{bad}: not valid TOML: ")
    latin = tmp_path / "latin.toml"
    latin.write_bytes(b'[spool]\ndir = "/caf\xe9"\n')
    assert message(latin).startswith(f"{latin}: not valid UTF-8: ")


def test_a_file_the_service_user_may_not_read_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """PermissionError becomes a hint about the service user (root could read it anyway, so it is faked)."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(configfiles, "_read_regular", refuse)
    path = tmp_path / "secret.toml"
    assert message(path) == f"{path}: permission denied (is it readable by the service user?)"


def test_problems_in_a_file_name_the_file(tmp_path: Path) -> None:
    """A valid TOML file with a bad value: the file, then the key."""
    path = tmp_path / "ipspool.toml"
    path.write_text("[workers]\nthreads = 0\n")
    assert message(path) == f"{path}: workers.threads: Input should be greater than 0, got 0"


def test_the_built_in_defaults_are_the_source_when_no_file_is_given() -> None:
    """Without --config, a bad --spool is reported against <defaults>."""
    assert message(None, spool="") == "<defaults>: spool.dir: Value error, the spool directory must be set, got ''"


def test_a_missing_key_in_a_table_does_not_echo_the_whole_table() -> None:
    """When pydantic's input is the enclosing table, the message stops after the problem."""
    with pytest.raises(ConfigError) as info:
        parse_config({"lists": [{"name": "x"}]}, "x.toml")
    assert info.value.problems == ("lists.0.path: Field required",)


def test_a_document_that_is_not_a_table_is_reported_at_the_top_level() -> None:
    """An error with no key path says "(top level)"."""
    with pytest.raises(ConfigError) as info:
        parse_config([], "x.toml")  # type: ignore[arg-type]
    (problem,) = info.value.problems
    assert problem.startswith("(top level): ") and problem.endswith(", got []")


def test_several_problems_are_one_per_line_each_naming_the_file() -> None:
    """str(ConfigError) is exactly one "source: problem" line per problem."""
    error = ConfigError("a.toml", ("one", "two"))
    assert str(error) == "a.toml: one\na.toml: two"


def test_usable_cpus_is_the_affinity_mask_size() -> None:
    """processes = 0 means one worker per CPU this process may run on."""
    assert usable_cpus() == len(os.sched_getaffinity(0))


def test_the_spool_override_keeps_the_other_spool_keys(tmp_path: Path) -> None:
    """--spool replaces spool.dir only; the file's other [spool] keys stay, also through load_config."""
    config = parse_config({"spool": {"keep_processed": False, "max_line_bytes": 100}}, spool="/b")
    assert (config.spool.dir, config.spool.keep_processed, config.spool.max_line_bytes) == ("/b", False, 100)
    path = tmp_path / "ipspool.toml"
    path.write_text('[spool]\ndir = "/a"\nkeep_processed = false\n')
    loaded = load_config(path, spool="/c")
    assert (loaded.spool.dir, loaded.spool.keep_processed) == ("/c", False)


def test_a_config_error_keeps_its_problems_through_a_context_manager() -> None:
    """Leaving a generator-based ``with`` block sets the traceback: the error must survive that unchanged."""
    import contextlib

    @contextlib.contextmanager
    def around():  # type: ignore[no-untyped-def]
        yield

    with pytest.raises(ConfigError) as caught, around():
        parse_config({"workers": {"threads": "many"}}, "x.toml")
    assert caught.value.source == "x.toml"
    assert caught.value.problems == ("workers.threads: Input should be a valid integer, got 'many'",)
    assert str(caught.value).startswith("x.toml: workers.threads: ")
