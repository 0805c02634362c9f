"""docs/ipspool.schema.json: generated from the declarations, and it agrees with the validator on real files."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from typing import Any

import jsonschema
import pytest

from ipspool.config import ConfigError, json_schema, parse_config
from tests.support.daemon import REPO

SCHEMA_FILE = REPO / "docs" / "ipspool.schema.json"


@pytest.fixture(scope="module")
def validator() -> jsonschema.protocols.Validator:
    schema = json.loads(SCHEMA_FILE.read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)  # a well-formed 2020-12 schema
    return cls(schema)


def test_schema_file_is_what_check_config_schema_prints() -> None:
    """docs/ipspool.schema.json equals `ipspool check-config --schema` (regenerate it with that command)."""
    out = subprocess.run([sys.executable, "-m", "ipspool", "check-config", "--schema"], capture_output=True,
                         text=True, check=True)
    assert json.loads(out.stdout) == json_schema()
    assert SCHEMA_FILE.read_text() == out.stdout, (
        "regenerate with: python -m ipspool check-config --schema > docs/ipspool.schema.json")


def test_schema_carries_types_defaults_bounds_enums_and_descriptions() -> None:
    """workers.threads: integer, default 16, 1..4096 (exclusive 0), with its help text; log.level an enum."""
    defs = json_schema()["$defs"]
    threads = defs["WorkersConfig"]["properties"]["threads"]
    assert threads["type"] == "integer" and threads["default"] == 16
    assert threads["exclusiveMinimum"] == 0 and threads["maximum"] == 4096
    assert threads["description"] == "Threads in each worker's pool."
    assert defs["LogConfig"]["properties"]["level"]["enum"] == ["debug", "info", "warning", "error"]
    assert defs["SpoolConfig"]["additionalProperties"] is False


def test_example_configuration_is_valid_against_the_schema(validator: jsonschema.protocols.Validator) -> None:
    """config/ipspool.toml (every key, with its default) passes the schema."""
    validator.validate(tomllib.loads((REPO / "config" / "ipspool.toml").read_text()))


def test_a_dropin_alone_is_valid_against_the_schema(validator: jsonschema.protocols.Validator) -> None:
    """Every key is optional, so a two-line conf.d/ file validates too."""
    validator.validate(tomllib.loads("[workers]\nthreads = 4\n"))
    validator.validate(tomllib.loads('[[lists]]\nname = "blocklist"\npath = "/etc/ipspool/block.txt"\nalert = true\n'))


BAD: list[tuple[str, str]] = [
    ("[workers]\nthreads = 0\n", "workers.threads"),
    ("[workers]\nthreads = 5000\n", "workers.threads"),
    ('[workers]\nthreads = "16"\n', "workers.threads"),
    ("[workers]\nthredas = 4\n", "workers.thredas"),
    ('[log]\nlevel = "verbose"\n', "log.level"),
    ("[spool]\nrescan_interval = 100000.0\n", "spool.rescan_interval"),
    ('[[lists]]\nname = "has space"\npath = "/x"\n', "lists.0.name"),
    ('[[lists]]\nname = "nopath"\n', "lists.0.path"),
    ("[nosuchsection]\nx = 1\n", "nosuchsection"),
]


@pytest.mark.parametrize(("text", "key"), BAD)
def test_bad_configurations_fail_the_schema_and_the_validator(
    validator: jsonschema.protocols.Validator, text: str, key: str,
) -> None:
    """Each bad file is refused by the schema and by ipspool itself, both pointing at the same key."""
    data: dict[str, Any] = tomllib.loads(text)
    errors = list(validator.iter_errors(data))
    assert errors, f"the schema accepts {text!r}"
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    assert any(p.startswith(key + ":") for p in info.value.problems), info.value.problems
