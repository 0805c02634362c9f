"""docs/configuration.md, generated from the declarations in config.py.

``python -m ipspool.tools.configdoc > docs/configuration.md``; a test fails
when the file and the declarations drift apart.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, BeforeValidator

from ipspool.config import Config, InputRule, ListConfig

__all__ = ["render"]

_HEADER = """# Configuration reference

## Which file

Every command (`run`, `submit`, `status`, `reload`, `check-config`) finds its
configuration by one rule:

1. `--config FILE` (`-c FILE`);
2. else the file named by `$IPSPOOL_CONFIG`;
3. else `/etc/ipspool/ipspool.toml`, when it exists (the package installs it,
   so `ipspool status` needs no flag on a packaged install);
4. else the built-in defaults below.

A file named by step 1 or 2 that does not exist is an error, never a reason
to fall through to the next step. The daemon keeps the file it started with:
a reload (`systemctl reload`, SIGHUP, `ipspool reload`) reads that file again.

## Drop-ins

Beside the main file, `conf.d/*.toml` (for the package:
`/etc/ipspool/conf.d/*.toml`) are read in name order and merged over it, so a
local change is one short file that upgrades never touch:

```toml
# /etc/ipspool/conf.d/10-threads.toml
[workers]
threads = 32
```

- Tables merge key by key (at any depth): this drop-in changes
  `workers.threads` and leaves every other `[workers]` key as it was.
- Anything else replaces the earlier value whole: a later scalar wins, and an
  array (`pipeline.stages`, `rdns.nameservers`, every `[[lists]]` entry
  together) is replaced, not appended to. To add a list, repeat the lists you
  keep in the drop-in.
- A reload reads the drop-ins again; `check-config` lists the files it read.
- Names starting with `.` are skipped silently; other names that do not end
  in `.toml` (`10-threads.toml.dpkg-old`, `README`, backups) are not read and
  are reported (`config.dropin_ignored`, a warning, and on `check-config`'s
  stderr). A `*.toml` that cannot be used (not a regular file after following
  a symbolic link, unreadable, not UTF-8, not TOML) is an error, like any
  problem of the main file: the daemon never runs on a configuration other
  than the one written. A `conf.d` that is not a directory is an error too.
- The built-in defaults (no main file) have no drop-ins.

Each problem names its file and key: a key set by a drop-in is reported as
`/etc/ipspool/ipspool.toml: conf.d/10-threads.toml: workers.threads: Input
should be greater than 0, got 0`.

## Checking and showing

Every key is optional: the defaults below are built in, and
`config/ipspool.toml` is the same defaults as a commented file. Unknown keys
and wrong types are errors that name the key.

- `ipspool check-config` validates the merged result, loads every stage and
  checks the paths: exit 0, or 78 (`CONFIG_ERROR`) with every problem listed.
  It says which file it read, how it found it, and each drop-in. With
  `--json` it prints one object: `ok`, `config` (the main file or `null`),
  `found_by` (`--config`, `$IPSPOOL_CONFIG`, `system` or `defaults`),
  `files`, `ignored` (`file`, `reason`), `stages`, `executor`, `spool`; on a
  bad configuration `ok` is `false` with `config` and `problems`.
- `ipspool check-config --show` prints the merged settings, every key with
  defaults filled in, as TOML (`--show --json`: as JSON). It validates but
  loads no stage.
- `ipspool check-config --schema` prints a JSON Schema (2020-12) of the file
  (and of each drop-in: every key is optional), generated from the same
  declarations as this page, with types, defaults, bounds, enums and
  descriptions. It is kept in the repository as
  [ipspool.schema.json](ipspool.schema.json); editors that read JSON Schema
  for TOML (taplo, Even Better TOML) can use it. What only the daemon can
  check (a stage that imports, a list file that exists) is left to
  `check-config`.

On `systemctl reload` (SIGHUP) a bad file is refused and the daemon keeps
running on the old one; `spool.dir`, `spool.results_dir` and
`spool.runtime_dir` only change on restart.

This page is generated from `daemon/ipspool/config.py` by
`python -m ipspool.tools.configdoc`.
"""


def _type_name(annotation: Any) -> str:
    name = getattr(annotation, "__name__", None) or str(annotation)
    return {"str": "string", "int": "integer", "float": "number", "bool": "boolean"}.get(
        name, str(annotation).replace("typing.", "")
    )


def _default(value: Any) -> str:
    if isinstance(value, tuple):
        value = list(value)
    return "`" + json.dumps(value) + "`"


def _constraint(meta: Any) -> str:
    """A bound as the reader wants it; "" for metadata that is no bound (a validator that turns a list
    into a tuple)."""
    if isinstance(meta, BeforeValidator):
        return ""
    for attr, sign in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<="), ("min_length", "length >="),
                       ("pattern", "matches")):
        value = getattr(meta, attr, None)
        if value is not None:
            return f"{sign} {value}"
    return str(meta)


def _table(model: type[BaseModel]) -> list[str]:
    rows = ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
    for key, field in model.model_fields.items():
        default = "(required)" if field.is_required() else _default(field.get_default(call_default_factory=True))
        constraints = ", ".join(c for c in map(_constraint, field.metadata) if c)
        kind = _type_name(field.annotation) + (f" ({constraints})" if constraints else "")
        rows.append(f"| `{key}` | {kind} | {default} | {field.description or ''} |")
    return rows


def render() -> str:
    out = [_HEADER]
    for section, field in Config.model_fields.items():
        if section == "lists":
            out += ["## `[[lists]]`", "", "Repeat the table once per CIDR list (used by the `lists` stage).", ""]
            out += _table(ListConfig)
        elif section == "inputs":
            out += ["## `[[inputs]]`", "", "Repeat the table once per input rule; the first rule whose `match` "
                    "glob matches a file's name chooses its reader ([inputs.md](inputs.md)).", ""]
            out += _table(InputRule)
        else:
            model = field.annotation
            assert isinstance(model, type) and issubclass(model, BaseModel)
            out += [f"## `[{section}]`", ""]
            out += _table(model)
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    print(render(), end="")
