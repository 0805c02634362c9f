"""The ``geoip`` stage: country and autonomous system from MaxMind DB files.

Databases are memory-mapped, so the page cache holds one copy that every
worker process shares. They are read with ``maxminddb-rust`` where it is
installed (a dependency with wheels for 3.11 to 3.13: 1.4-1.6x the lookups a second,
docs/enrichment.md), else with the ``maxminddb`` C extension, else with its
pure-Python reader; the results are the same. ``refresh()`` notices a
database replaced by rename() (a new inode, as geoipupdate does it) and
swaps in a reader of the new file.
A file rewritten in place under a mapping can show readers torn data, or
SIGBUS if it shrinks; replace databases by rename (docs/enrichment.md).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Protocol

import maxminddb
import structlog

from ipspool.address import Address
from ipspool.config import Config, ConfigError
from ipspool.stages._files import FileStamp, describe_os_error, stamp_path

__all__ = ["READERS", "GeoipStage", "build", "open_reader"]


class Reader(Protocol):
    """What the stage needs of a MaxMind DB reader (maxminddb's or maxminddb-rust's)."""

    def get(self, address: Any, /) -> Any: ...
    def metadata(self) -> Any: ...
    def close(self) -> None: ...


def _rust() -> ModuleType | None:
    try:
        import maxminddb_rust
    except ImportError:
        return None
    return maxminddb_rust


_RUST = _rust()
# Reader implementations available here, the preferred first.
READERS: tuple[str, ...] = ("maxminddb-rust", "maxminddb") if _RUST is not None else ("maxminddb",)


def _mmap_mode() -> int:
    """The C extension's reader if it was built, else the pure-Python one.

    Both memory-map the file; the extension walks the tree in C, several
    times faster per lookup.
    """
    try:
        from maxminddb import extension
    except ImportError:
        return maxminddb.MODE_MMAP
    return maxminddb.MODE_MMAP_EXT if hasattr(extension, "Reader") else maxminddb.MODE_MMAP


_MODE = _mmap_mode()


class _DatabaseError(Exception):
    """A database that cannot be opened, with a reason for an operator."""


def open_reader(path: str, implementation: str | None = None) -> Reader:
    """Open a MaxMind DB memory-mapped; _DatabaseError says why it cannot be.

    ``implementation`` is one of READERS (default: the first). A file
    maxminddb-rust cannot open is opened again with maxminddb, which then
    either reads it or names the problem in its own words.
    """
    if (implementation or READERS[0]) == "maxminddb-rust" and _RUST is not None:
        try:
            reader: Reader = _RUST.open_database(path)
        except (OSError, RuntimeError, ValueError):
            pass  # its InvalidDatabaseError is a RuntimeError; maxminddb below says what is wrong
        else:
            return reader
    try:
        return maxminddb.open_database(path, _MODE)
    except OSError as exc:
        raise _DatabaseError(describe_os_error(exc)) from exc
    except (maxminddb.InvalidDatabaseError, ValueError) as exc:
        # ValueError: the reader's own check of the metadata section.
        raise _DatabaseError(f"not a valid MaxMind DB: {exc}") from exc


@dataclass(frozen=True, slots=True)
class _Database:
    """One opened version of one configured database file."""

    key: str
    path: str
    reader: Reader
    stamp: FileStamp | None
    ipv6: bool
    implementation: str | None = None  # as asked of open_reader (None: the preferred one)

    def get(self, address: Address) -> Mapping[str, Any] | None:
        if address.version == 6 and not self.ipv6:
            return None  # an IPv4-only database raises for IPv6 lookups
        record = self.reader.get(address)
        return record if isinstance(record, Mapping) else None


def _load(key: str, path: str, implementation: str | None = None) -> _Database:
    # The stamp is taken before opening: if the file is replaced between the
    # two, the next refresh sees a changed stamp and loads it once more, where
    # the other order could miss the change for good.
    stamp = stamp_path(path)
    reader = open_reader(path, implementation)
    return _Database(key, path, reader, stamp, reader.metadata().ip_version == 6, implementation)


def _country(record: Mapping[str, Any] | None) -> str | None:
    country = record.get("country") if record else None
    code = country.get("iso_code") if isinstance(country, Mapping) else None
    return code if isinstance(code, str) else None


def _asn(record: Mapping[str, Any] | None) -> tuple[int | None, str | None]:
    if not record:
        return None, None
    number = record.get("autonomous_system_number")
    org = record.get("autonomous_system_organization")
    return (
        number if isinstance(number, int) else None,
        org if isinstance(org, str) else None,
    )


class GeoipStage:
    """Adds ``country`` (with country_db) and ``asn``, ``as_org`` (with asn_db)."""

    name = "geoip"
    blocking = False

    def __init__(self, country: _Database | None, asn: _Database | None) -> None:
        # One tuple, swapped whole by refresh(), read once per call.
        self._databases = (country, asn)
        self._failed: dict[str, FileStamp | None] = {}
        self._refresh_lock = threading.Lock()

    def __call__(self, address: Address, /) -> Mapping[str, Any]:
        country_db, asn_db = self._databases
        fields: dict[str, Any] = {}
        if country_db is not None:
            fields["country"] = _country(country_db.get(address))
        if asn_db is not None:
            fields["asn"], fields["as_org"] = _asn(asn_db.get(address))
        return fields

    def _reloaded(self, database: _Database | None) -> _Database | None:
        """A reader of the file now at the database's path, if it changed."""
        if database is None:
            return None
        current = stamp_path(database.path)
        if current == database.stamp:
            return database
        if database.key in self._failed and self._failed[database.key] == current:
            return database  # already reported; wait for the next change
        try:
            fresh = _load(database.key, database.path, database.implementation)
        except _DatabaseError as exc:
            self._failed[database.key] = current
            structlog.get_logger().error(
                "geoip.reload_failed",
                key=database.key,
                file=database.path,
                error=str(exc),
                action="keeping the database loaded before",
            )
            return database
        self._failed.pop(database.key, None)
        _log_loaded(fresh, reload=True)
        return fresh

    def refresh(self) -> None:
        """Swap in readers of databases whose file was replaced."""
        with self._refresh_lock:
            old = self._databases
            new = (self._reloaded(old[0]), self._reloaded(old[1]))
            if any(fresh is not before for fresh, before in zip(new, old, strict=True)):
                # The old reader is not closed here: a pool thread may be in
                # the middle of a lookup with it. Dropping the last reference
                # unmaps it once no thread holds it any more.
                self._databases = new

    def close(self) -> None:
        with self._refresh_lock:
            for database in self._databases:
                if database is not None:
                    database.reader.close()
            self._databases = (None, None)


def _log_loaded(database: _Database, *, reload: bool) -> None:
    metadata = database.reader.metadata()
    structlog.get_logger().info(
        "geoip.loaded",
        key=database.key,
        file=database.path,
        database_type=metadata.database_type,
        build_epoch=metadata.build_epoch,
        reload=reload,
    )


def build(config: Config, implementation: str | None = None) -> GeoipStage:
    """Open the configured databases, or raise ConfigError naming each bad one.

    ``implementation``: one of READERS to read them with (default: the first)."""
    settings = config.geoip
    wanted = {"geoip.country_db": settings.country_db, "geoip.asn_db": settings.asn_db}
    if not any(wanted.values()):
        raise ConfigError(
            "[geoip]",
            ("the geoip stage is enabled but neither geoip.country_db nor geoip.asn_db is set",),
        )
    opened: dict[str, _Database] = {}
    problems: list[str] = []
    for key, path in wanted.items():
        if not path:
            continue
        try:
            opened[key] = _load(key, path, implementation)
        except _DatabaseError as exc:
            problems.append(f"{key}: cannot open {path}: {exc}")
    if problems:
        for database in opened.values():
            database.reader.close()
        raise ConfigError("[geoip]", tuple(problems))
    for database in opened.values():
        _log_loaded(database, reload=False)
    return GeoipStage(opened.get("geoip.country_db"), opened.get("geoip.asn_db"))
