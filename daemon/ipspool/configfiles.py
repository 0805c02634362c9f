"""Where the configuration comes from: which file, its drop-ins, and how they merge.

One rule for every command (run, submit, status, reload, check-config):

1. ``--config FILE``;
2. else ``$IPSPOOL_CONFIG``;
3. else ``/etc/ipspool/ipspool.toml`` when it exists;
4. else the built-in defaults.

Beside the main file, ``conf.d/*.toml`` are drop-ins, read in name order and
merged over it: a table is merged key by key (recursively), anything else, an
array (``[[lists]]`` too) or a scalar, replaces the earlier value whole. The
built-in defaults have no drop-ins.

In ``conf.d/``, hidden names (``.swp`` files) are skipped silently, other
names that do not end in ``.toml`` (``.dpkg-old``, ``~`` backups, notes) are
ignored with a warning, and a ``*.toml`` that is not a regular file (after
following a symbolic link) or cannot be read is an error: the daemon never
runs on a configuration other than the one the operator wrote.

This module only reads files; what the keys mean, and their validation, is
``ipspool.config``'s.
"""

from __future__ import annotations

import json
import os
import stat
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "CONFIG_ENV",
    "DROPIN_DIR",
    "SYSTEM_DIR_ENV",
    "ConfigError",
    "Discovered",
    "Ignored",
    "Layers",
    "discover",
    "dump_toml",
    "read_layers",
    "system_config",
]

CONFIG_ENV = "IPSPOOL_CONFIG"
# Tests point this at a directory of their own so that nothing they run ever
# depends on (or reads) the machine's /etc; operators use $IPSPOOL_CONFIG.
SYSTEM_DIR_ENV = "IPSPOOL_TEST_SYSTEM_DIR"
SYSTEM_DIR = Path("/etc/ipspool")
MAIN_NAME = "ipspool.toml"
DROPIN_DIR = "conf.d"
DROPIN_SUFFIX = ".toml"
_MAX_FILE = 1 << 20  # a configuration file larger than 1 MiB is a mistake, not a setting

Key = tuple[str, ...]


class ConfigError(Exception):
    """Every problem found in one configuration, each naming file and key.

    A plain exception, not a frozen dataclass: Python sets ``__traceback__``
    on an exception as it leaves a ``with`` block of a generator-based
    context manager, which a frozen instance refuses (the real error was
    then hidden behind a FrozenInstanceError).
    """

    def __init__(self, source: str, problems: tuple[str, ...]) -> None:
        super().__init__(source, problems)
        self.source = source
        self.problems = problems

    def __str__(self) -> str:
        return "\n".join(f"{self.source}: {problem}" for problem in self.problems)


@dataclass(frozen=True)
class Discovered:
    """The main file the rule picked (None: built-in defaults) and which step picked it."""

    path: Path | None
    origin: str  # "--config", "$IPSPOOL_CONFIG", "system" or "defaults"

    @property
    def label(self) -> str:
        return str(self.path) if self.path is not None else "<defaults>"


@dataclass(frozen=True)
class Ignored:
    """A name in conf.d/ that was not read, and why."""

    path: Path
    reason: str


@dataclass
class Layers:
    """The main file and its drop-ins merged: the data, and which file set each key last."""

    data: dict[str, Any] = field(default_factory=dict)
    origins: dict[Key, Path] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)
    ignored: list[Ignored] = field(default_factory=list)

    def origin(self, loc: tuple[object, ...]) -> Path | None:
        """The file that set the key at ``loc`` (or the closest table above it)."""
        parts = tuple(str(p) for p in loc)
        for end in range(len(parts), 0, -1):
            if parts[:end] in self.origins:
                return self.origins[parts[:end]]
        return None

    def dropin_label(self, loc: tuple[object, ...]) -> str:
        """``"conf.d/NAME: "`` when a drop-in set the key at ``loc``; empty for the main file."""
        origin = self.origin(loc)
        if origin is None or not self.files or origin == self.files[0]:
            return ""
        return f"{DROPIN_DIR}/{origin.name}: "


def system_config() -> Path:
    """``/etc/ipspool/ipspool.toml`` (or the test directory's)."""
    return Path(os.environ.get(SYSTEM_DIR_ENV) or SYSTEM_DIR) / MAIN_NAME


def discover(cli_path: str | None, environ: Mapping[str, str] | None = None) -> Discovered:
    """The one discovery rule (module docstring). An explicit file that is missing is not skipped."""
    env = os.environ if environ is None else environ
    if cli_path:
        return Discovered(Path(cli_path).absolute(), "--config")
    if env.get(CONFIG_ENV):
        return Discovered(Path(env[CONFIG_ENV]).absolute(), f"${CONFIG_ENV}")
    system = system_config()
    if os.path.lexists(system):
        return Discovered(system, "system")
    return Discovered(None, "defaults")


def read_layers(main: Path | None) -> Layers:
    """Read the main file and its drop-ins; raise ConfigError listing every file that cannot be read."""
    layers = Layers()
    if main is None:
        return layers
    problems: list[str] = []
    tables = [(main, _read_toml(main, problems, main))]
    for dropin in _dropins(main, layers, problems):
        tables.append((dropin, _read_toml(dropin, problems, main)))
    if problems:
        raise ConfigError(str(main), tuple(problems))
    for path, table in tables:
        layers.files.append(path)
        _merge(layers.data, table, (), path, layers.origins)
    return layers


def _label(path: Path, main: Path) -> str:
    """How a problem names its file: nothing for the main file, ``conf.d/NAME`` for a drop-in."""
    return "" if path == main else f"{DROPIN_DIR}/{path.name}: "


def _dropins(main: Path, layers: Layers, problems: list[str]) -> list[Path]:
    """The *.toml in conf.d/ beside ``main``, in name order; other names go to layers.ignored."""
    directory = main.parent / DROPIN_DIR
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        return []
    except NotADirectoryError:
        problems.append(f"{DROPIN_DIR}: not a directory (drop-ins go in {directory}/*.toml)")
        return []
    except PermissionError:
        problems.append(f"{DROPIN_DIR}: permission denied (is it readable by the service user?)")
        return []
    found = []
    for name in names:
        if name.startswith("."):
            continue
        if not name.endswith(DROPIN_SUFFIX):
            layers.ignored.append(Ignored(directory / name, f"not a {DROPIN_SUFFIX} file"))
            continue
        found.append(directory / name)
    return found


def _read_toml(path: Path, problems: list[str], main: Path) -> dict[str, Any]:
    """The parsed file, or {} with its problem (named by file) added to ``problems``."""
    label = _label(path, main)
    try:
        raw = _read_regular(path)
    except FileNotFoundError:
        problems.append(f"{label}file not found" + (" (a dangling symbolic link?)" if label else ""))
        return {}
    except PermissionError:
        problems.append(f"{label}permission denied (is it readable by the service user?)")
        return {}
    except IsADirectoryError:
        problems.append(f"{label}is a directory, expected a TOML file")
        return {}
    except OSError as exc:
        problems.append(f"{label}{exc.strerror or exc}")
        return {}
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        problems.append(f"{label}not valid UTF-8: {exc}")
    except tomllib.TOMLDecodeError as exc:
        problems.append(f"{label}not valid TOML: {exc}")
    return {}


def _read_regular(path: Path) -> bytes:
    """The bytes of a regular file (a symbolic link is followed); OSError for anything else."""
    # O_NONBLOCK: a FIFO named like a drop-in must not hang the daemon.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as handle:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(path)
        if not stat.S_ISREG(mode):
            raise OSError(f"not a regular file ({_kind(mode)}), expected a TOML file")
        raw = handle.read(_MAX_FILE + 1)
    if len(raw) > _MAX_FILE:
        raise OSError(f"larger than {_MAX_FILE} bytes, not a configuration file")
    return raw


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a device"),
                       (stat.S_ISBLK, "a device")):
        if test(mode):
            return name
    return "special"


def _merge(into: dict[str, Any], layer: Mapping[str, Any], at: Key, path: Path, origins: dict[Key, Path]) -> None:
    """Merge ``layer`` into ``into``: tables key by key, anything else replaced whole."""
    for key, value in layer.items():
        where = (*at, key)
        origins[where] = path
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value, where, path, origins)
        elif isinstance(value, dict):
            into[key] = {}
            _merge(into[key], value, where, path, origins)
        else:
            into[key] = value


def dump_toml(data: Mapping[str, Any]) -> str:
    """``data`` (tables of scalars and arrays, and arrays of tables) as TOML that tomllib reads back equal."""
    top = [f"{key} = {_toml_value(value)}" for key, value in data.items() if not _is_table(value)]
    out = top + ([""] if top else [])
    for key, value in data.items():
        if isinstance(value, dict):
            out += _toml_table(key, value, header=f"[{key}]")
        elif _is_table(value):
            for item in value:
                out += _toml_table(key, item, header=f"[[{key}]]")
    return "\n".join(out).rstrip("\n") + "\n"


def _is_table(value: object) -> bool:
    return isinstance(value, dict) or (
        isinstance(value, list | tuple) and bool(value) and all(isinstance(v, dict) for v in value))


def _toml_table(name: str, table: Mapping[str, Any], header: str) -> list[str]:
    lines = [header]
    nested = []
    for key, value in table.items():
        if isinstance(value, dict):
            nested.append((key, value))
        else:
            lines.append(f"{key} = {_toml_value(value)}")
    lines.append("")
    for key, value in nested:
        lines += _toml_table(f"{name}.{key}", value, header=f"[{name}.{key}]")
    return lines


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        # A JSON string is a TOML basic string, but for escapes TOML lacks (\/ is never produced).
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML form for {type(value).__name__}")
