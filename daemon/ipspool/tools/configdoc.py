"""docs/configuration.md, generated from the declarations in config.py.

``python -m ipspool.tools.configdoc > docs/configuration.md``; a test fails
when the file and the declarations drift apart.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel

from ipspool.config import Config, InputRule, ListConfig

__all__ = ["render"]

_HEADER = """# Configuration reference

ipspool reads one TOML file (`--config FILE`; the package installs
`/etc/ipspool/ipspool.toml`). Every key is optional: the defaults below are
built in, and `config/ipspool.toml` is the same defaults as a commented file.
Unknown keys and wrong types are errors that name the key; check a file with
`ipspool check-config --config FILE` (exit 0, or 4 with every problem listed).
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
        constraints = ", ".join(_constraint(m) for m in field.metadata)
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
