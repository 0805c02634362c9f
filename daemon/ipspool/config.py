"""The configuration: declared once, validated once.

Every key is declared here with its type, default and help text. The example
file ``config/ipspool.toml`` carries the same defaults (a test keeps the two
in step) and ``docs/configuration.md`` describes them. Validation is pydantic's;
this module turns its errors into messages that name the file and the key.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator

from ipspool.configfiles import ConfigError, Discovered, Ignored, Layers, discover, read_layers
from ipspool.spool import producer_subdir

__all__ = [
    "AlertsConfig",
    "Config",
    "ConfigError",
    "ExecutorConfig",
    "GeoipConfig",
    "InputRule",
    "ListConfig",
    "LoadedConfig",
    "LogConfig",
    "MetricsConfig",
    "PipelineConfig",
    "RdnsConfig",
    "SpoolConfig",
    "WorkersConfig",
    "json_schema",
    "load_config",
    "load_discovered",
    "load_for",
    "parse_config",
    "parse_listen",
    "usable_cpus",
    "with_log_level",
]

DEFAULT_SPOOL = "/var/spool/ipspool"

# Upper bounds: a value past these is a typo or a unit mistake (bytes for
# KiB, milliseconds for seconds), never a setting anyone means, and each would
# exhaust the machine (a million forks, a billion threads) or disable a
# safeguard (an infinite timeout never fires). Every float key has one, so
# inf and nan are refused too (nan fails every comparison), with a message
# that names the key and the bound.
DAY = 86_400.0             # the longest timeout, interval or age in seconds
MAX_PROCESSES = 1024       # workers.processes: beyond any machine's cores
MAX_THREADS = 4096         # workers.threads: per worker
MAX_CHUNK_BYTES = 1 << 30  # workers.chunk_bytes, and spool.max_line_bytes (a line is read whole)
MAX_FILE_BYTES = 1 << 40   # spool.max_file_bytes: 1 TiB
MAX_ATTEMPTS = 100         # workers.max_attempts
MAX_SUMMARY_TOP = 1000     # spool.summary_top: entries of each top list in a summary
MAX_INFLIGHT = 2 * MAX_THREADS  # workers.max_inflight: chunks queued to one worker
MAX_RDNS_TIMEOUT = 60.0    # rdns.timeout: one lookup attempt
MAX_RDNS_RETRIES = 10      # rdns.retries
MAX_CACHE_SIZE = 1 << 24   # rdns.cache_size: answers per worker
MAX_ALERTS_PER_FILE = 1_000_000  # alerts.listed_per_file
MAX_BACKLOG_FILES = 100_000_000  # alerts.backlog_files
MAX_DISK_LOW_BYTES = 1 << 50     # alerts.disk_low_bytes: 1 PiB
MAX_METRICS_INTERVAL = 3600.0    # metrics.interval
MAX_DNS_IN_FLIGHT = 65_536       # rdns.max_in_flight: queries one worker keeps outstanding
MAX_DNS_RATE = 10_000_000.0      # rdns.rate_limit: queries/s per nameserver
MAX_DISK_CACHE = 1 << 30         # rdns.disk_cache_size: answers on disk
MAX_CLUSTER_INFLIGHT = 1 << 20   # executor.max_inflight: chunks on a cluster at once
MAX_EXPAND = 1 << 16             # inputs.expand_cap: addresses one network line may expand into
MAX_SUBDIRS = 100                # spool.max_subdirs: each is an inotify instance and a thread of the watch

Seconds = Annotated[float, Field(gt=0, le=DAY)]


def _list_to_tuple(value: object) -> object:
    # TOML gives a list; the frozen model keeps a tuple (strict mode takes no list for a tuple).
    return tuple(value) if isinstance(value, list) else value


Names = Annotated[tuple[str, ...], BeforeValidator(_list_to_tuple)]


class _Section(BaseModel):
    # extra="forbid": an unknown key is an error that names it, so a typo
    # never silently leaves a default in force. strict: "4" is not 4.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class SpoolConfig(_Section):
    dir: str = Field(DEFAULT_SPOOL, description="The spool directory (tmp/ incoming/ active/ done/ failed/).")
    results_dir: str = Field("", description="Where NAME.jsonl results go; empty: SPOOL/results.")
    runtime_dir: str = Field(
        "",
        description="Where the stats socket and its authkey live; empty: SPOOL/.ipspool.",
    )
    keep_processed: bool = Field(True, description="Move processed inputs to done/ (true) or delete them.")
    max_file_bytes: Annotated[int, Field(gt=0, le=MAX_FILE_BYTES)] = Field(
        1 << 30, description="Inputs larger than this go to failed/ unread."
    )
    max_decompressed_bytes: Annotated[int, Field(gt=0, le=MAX_FILE_BYTES)] = Field(
        4 << 30, description="A compressed input (gzip, bzip2, xz, zstd) that decompresses to more than this goes "
                             "to failed/ as decompressed_too_large (a decompression bomb)."
    )
    max_line_bytes: Annotated[int, Field(gt=0, le=MAX_CHUNK_BYTES)] = Field(
        4096, description="A longer line is an error record; its bytes are never held in memory."
    )
    summaries: bool = Field(
        True, description="Write RESULTS/NAME.summary.json beside each result; it costs one more fsync a file "
                          "(off: for very many small files, results only)."
    )
    summary_top: Annotated[int, Field(ge=1, le=MAX_SUMMARY_TOP)] = Field(
        10, description="Entries in each top list (classes, lists, countries, ASNs) of RESULTS/NAME.summary.json."
    )
    rescan_interval: Seconds = Field(
        10.0, description="Seconds between scans of incoming/ (inotify can drop events)."
    )
    subdirs: Names = Field(
        (), description="Producer subdirectories the daemon creates in incoming/, with incoming/'s group and "
                        "permissions: a file renamed into incoming/SUB/ becomes job SUB~NAME (docs/inputs.md)."
    )
    max_subdirs: Annotated[int, Field(ge=0, le=MAX_SUBDIRS)] = Field(
        32, description="Producer subdirectories of incoming/ read, in name order (those of spool.subdirs and "
                        "any other suitably named directory); 0: a directory in incoming/ is an input that "
                        "goes to failed/."
    )
    max_output_ratio: Annotated[int, Field(ge=1, le=10_000)] = Field(
        64, description="A chunk whose records outgrow this many times its input (+64 KiB) fails its file "
                        "as result_too_large."
    )
    producer_group: str = Field(
        "", description="Group given write access to incoming/ and tmp/; empty: the daemon's own."
    )
    check_owner: bool = Field(
        True, description="With producer_group set: inputs not owned by a member of that group, the service "
                          "user or root go to failed/ unread (foreign_owner)."
    )

    @field_validator("dir")
    @classmethod
    def _not_empty(cls, value: str) -> str:
        if not value:
            raise ValueError("the spool directory must be set")
        return value

    @field_validator("subdirs")
    @classmethod
    def _subdir_names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for name in value:
            if not producer_subdir(name):
                raise ValueError(f"{name!r} is not a subdirectory name: 1 to 64 of A-Z a-z 0-9 _ . -, "
                                 "not starting with . or -")
        if len(set(value)) != len(value):
            raise ValueError("a subdirectory is named twice")
        return value

    @model_validator(mode="after")
    def _subdirs_fit_the_cap(self) -> SpoolConfig:
        if len(self.subdirs) > self.max_subdirs:
            raise ValueError(f"spool.subdirs names {len(self.subdirs)} subdirectories, more than "
                             f"spool.max_subdirs = {self.max_subdirs}")
        return self


class WorkersConfig(_Section):
    processes: Annotated[int, Field(ge=0, le=MAX_PROCESSES)] = Field(
        0, description="Worker processes; 0: one per usable CPU (sched_getaffinity)."
    )
    threads: Annotated[int, Field(gt=0, le=MAX_THREADS)] = Field(16, description="Threads in each worker's pool.")
    chunk_bytes: Annotated[int, Field(ge=4096, le=MAX_CHUNK_BYTES)] = Field(
        1 << 20, description="Files are split into byte ranges of about this size."
    )
    max_attempts: Annotated[int, Field(gt=0, le=MAX_ATTEMPTS)] = Field(
        3, description="A chunk that kills this many workers sends its file to failed/."
    )
    graceful_timeout: Seconds = Field(
        30.0, description="Seconds a stop waits for in-flight chunks before it kills workers."
    )
    heartbeat_timeout: Seconds = Field(
        60.0, description="A worker that makes no progress for this long is killed and replaced."
    )
    max_inflight: Annotated[int, Field(ge=0, le=MAX_INFLIGHT)] = Field(
        0, description="Chunks queued to one worker at a time; 0: threads + 1."
    )


class PipelineConfig(_Section):
    stages: Names = Field(
        ("classify",), description='Built-in stage names, or "module:callable".'
    )

class LogConfig(_Section):
    level: Literal["debug", "info", "warning", "error"] = Field("info", description="Lowest level logged.")
    format: Literal["auto", "json", "console"] = Field(
        "auto", description="auto: readable on a terminal, JSON lines otherwise."
    )
    file: str = Field("", description="Log to this file instead of stdout (used with --daemonize).")


class ListConfig(_Section):
    name: Annotated[str, Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")] = Field(
        description="The name records and alerts carry (letters, digits, _ . -)."
    )
    path: str = Field(description="The list file: one address, CIDR or range a line; # and ; comments.")
    alert: bool = Field(False, description="Log ip.listed (warning) when an address matches.")


class RdnsConfig(_Section):
    nameservers: Names = Field((), description='"addr:port" entries; empty: the system resolver.')
    timeout: Annotated[float, Field(gt=0, le=MAX_RDNS_TIMEOUT)] = Field(
        2.0, description="Seconds for one lookup attempt."
    )
    retries: Annotated[int, Field(ge=0, le=MAX_RDNS_RETRIES)] = Field(
        1, description="Further attempts after a timeout."
    )
    cache_size: Annotated[int, Field(ge=0, le=MAX_CACHE_SIZE)] = Field(65536, description="Cached answers per worker.")
    negative_ttl: Annotated[float, Field(ge=0, le=DAY)] = Field(
        300.0, description="Longest time a no-PTR answer is cached (s); the zone's SOA can shorten it."
    )
    forward_confirm: bool = Field(False, description="Check that the PTR name resolves back.")
    max_in_flight: Annotated[int, Field(ge=1, le=MAX_DNS_IN_FLIGHT)] = Field(
        2048, description="Queries each worker keeps outstanding at most."
    )
    rate_limit: Annotated[float, Field(ge=0, le=MAX_DNS_RATE)] = Field(
        50000.0, description="Queries a second to each nameserver from the whole daemon "
                             "(each worker sends its share); 0: no limit."
    )
    cache_dir: str = Field("", description="Directory of the on-disk cache all workers share; empty: SPOOL/.state.")
    disk_cache_size: Annotated[int, Field(ge=0, le=MAX_DISK_CACHE)] = Field(
        1_000_000, description="Answers kept in the on-disk cache (it survives restarts); 0: none."
    )

class GeoipConfig(_Section):
    country_db: str = Field("", description="MaxMind DB with country data; empty: no country.")
    asn_db: str = Field("", description="MaxMind DB with ASN data; empty: no ASN.")


class AlertsConfig(_Section):
    listed_per_file: Annotated[int, Field(ge=0, le=MAX_ALERTS_PER_FILE)] = Field(
        20, description="ip.listed events per file before one ip.listed.suppressed."
    )
    backlog_files: Annotated[int, Field(ge=0, le=MAX_BACKLOG_FILES)] = Field(
        10000, description="spool.backlog warns when more files wait; 0: never."
    )
    backlog_age: Annotated[float, Field(ge=0, le=DAY)] = Field(
        300.0, description="spool.backlog warns when the oldest waiting file is older (s); 0: never."
    )
    disk_low_bytes: Annotated[int, Field(ge=0, le=MAX_DISK_LOW_BYTES)] = Field(
        100 << 20, description="disk.low warns when the results filesystem has less free space."
    )


class MetricsConfig(_Section):
    textfile: str = Field("", description="Write Prometheus metrics to this .prom file; empty: off.")
    interval: Annotated[float, Field(gt=0, le=MAX_METRICS_INTERVAL)] = Field(
        5.0, description="Seconds between metrics writes."
    )
    listen: str = Field(
        "", description='Serve the same metrics over HTTP at /metrics on "HOST:PORT" (IPv6: "[::1]:PORT"; '
                        'port 0: any free one, logged in metrics.listening); empty: off. Keep it on loopback '
                        "or behind a firewall: anyone who reaches it reads the counters."
    )

    @field_validator("listen")
    @classmethod
    def _host_port(cls, value: str) -> str:
        if value:
            parse_listen(value)
        return value


class ExecutorConfig(_Section):
    kind: Literal["local", "dask"] = Field(
        "local", description="Where chunks run: local (forked workers on this host) or dask (a Dask cluster)."
    )
    scheduler: str = Field(
        "", description='The Dask scheduler, "tcp://HOST:PORT" or "tls://HOST:PORT" (kind = "dask").'
    )
    max_inflight: Annotated[int, Field(ge=0, le=MAX_CLUSTER_INFLIGHT)] = Field(
        0, description="Chunks sent to the cluster at a time; 0: its thread count plus one per worker."
    )
    connect_timeout: Annotated[float, Field(gt=0, le=DAY)] = Field(
        10.0, description="Seconds one attempt to reach the scheduler may take; attempts repeat until it answers."
    )
    tls_ca_file: str = Field("", description="CA certificate the scheduler and workers are checked against (tls://).")
    tls_cert_file: str = Field("", description="This daemon's client certificate for a tls:// scheduler.")
    tls_key_file: str = Field("", description="The private key of tls_cert_file.")

    @model_validator(mode="after")
    def _consistent(self) -> ExecutorConfig:
        tls = (self.tls_ca_file, self.tls_cert_file, self.tls_key_file)
        if self.kind == "dask" and not self.scheduler.startswith(("tcp://", "tls://")):
            raise ValueError('kind = "dask" needs scheduler = "tcp://HOST:PORT" or "tls://HOST:PORT"')
        if self.scheduler.startswith("tls://") and not all(tls):
            raise ValueError("a tls:// scheduler needs tls_ca_file, tls_cert_file and tls_key_file")
        if any(tls) and not self.scheduler.startswith("tls://"):
            raise ValueError("tls_* files are set but the scheduler is not tls://")
        return self


FORMATS = ("auto", "plain", "delimited", "jsonl", "text", "networks")
_FORMAT_KEYS = {  # keys that mean something to one format only, and the format
    "column": "delimited", "delimiter": "delimited", "carry": "delimited",
    "field": "jsonl", "mode": "jsonl",
    "skip_reserved": "text", "expand_cap": "networks",
}


class InputRule(_Section):
    match: Annotated[str, Field(min_length=1)] = Field(
        "*", description="Glob on the input's name (fnmatch, case-sensitive); the first matching rule wins."
    )
    subdir: str | None = Field(
        None, description='Glob on the producer subdirectory of incoming/ the file came from ("" for incoming/ '
                          "itself); unset: anywhere."
    )
    format: Literal["auto", "plain", "delimited", "jsonl", "text", "networks"] = Field(
        "auto", description="The reader; auto: by extension, then by content (docs/inputs.md)."
    )
    column: str = Field("", description="delimited: the address column's header name (case-insensitive); "
                                        "empty: the first of the default names.")
    delimiter: str = Field("", description='delimited: the field separator ("," ";" "\\t" "|"); '
                                           "empty: sniffed from the header.")
    carry: Names = Field((), description="delimited: other columns copied into each record's "
                                                   "fields object.")
    field: str = Field("", description="jsonl: the address's field path (dotted: source.ip); "
                                       "empty: the first of the default paths.")
    mode: Literal["annotate", "wrap"] = Field(
        "annotate", description="jsonl: annotate (the original object plus an ipspool key) or wrap "
                                "(the ipspool record plus the original under source)."
    )
    skip_reserved: bool = Field(False, description="text: leave out addresses that are not global "
                                                   "(private, reserved, loopback...).")
    expand_cap: Annotated[int, Field(ge=0, le=MAX_EXPAND)] = Field(
        0, description="networks: also write one record per address of a network of at most this many; 0: never."
    )
    output: Literal["jsonl", "csv"] = Field("jsonl", description="The result's format: RESULTS/JOB.jsonl or "
                                                                 "RESULTS/JOB.csv.")

    @field_validator("delimiter")
    @classmethod
    def _one_character(cls, value: str) -> str:
        if value and (len(value) != 1 or value in "\"\r\n"):
            raise ValueError('one character other than a quote or a newline, such as "," ";" "\\t" "|"')
        return value

    @model_validator(mode="after")
    def _keys_fit_the_format(self) -> InputRule:
        for key, owner in _FORMAT_KEYS.items():
            if key in self.model_fields_set and self.format != owner:
                raise ValueError(f'{key} is a key of format = "{owner}", this rule has format = "{self.format}"')
        return self


class Config(_Section):
    spool: SpoolConfig = SpoolConfig()
    workers: WorkersConfig = WorkersConfig()
    pipeline: PipelineConfig = PipelineConfig()
    log: LogConfig = LogConfig()
    lists: Annotated[tuple[ListConfig, ...], BeforeValidator(_list_to_tuple)] = ()
    rdns: RdnsConfig = RdnsConfig()
    geoip: GeoipConfig = GeoipConfig()
    alerts: AlertsConfig = AlertsConfig()
    metrics: MetricsConfig = MetricsConfig()
    executor: ExecutorConfig = ExecutorConfig()
    inputs: Annotated[tuple[InputRule, ...], BeforeValidator(_list_to_tuple)] = ()

    # Derived paths: one place decides where everything lives.
    @property
    def spool_dir(self) -> Path:
        return Path(self.spool.dir)

    @property
    def results_dir(self) -> Path:
        return Path(self.spool.results_dir) if self.spool.results_dir else self.spool_dir / "results"

    @property
    def runtime_dir(self) -> Path:
        return Path(self.spool.runtime_dir) if self.spool.runtime_dir else self.spool_dir / ".ipspool"

    @property
    def process_count(self) -> int:
        return self.workers.processes or usable_cpus()

    @property
    def inflight_per_worker(self) -> int:
        return self.workers.max_inflight or self.workers.threads + 1


def parse_listen(value: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[IPV6]:PORT`` as (host, port); ValueError saying what is wrong."""
    host, sep, port = value.rpartition(":")
    if not sep or not host:
        raise ValueError(f'expected "HOST:PORT" or "[IPV6]:PORT", got {value!r}')
    if host.startswith("["):
        if not host.endswith("]") or len(host) < 3:
            raise ValueError(f"an IPv6 address goes in brackets: [::1]:PORT, got {value!r}")
        host = host[1:-1]
        if ":" not in host:
            raise ValueError(f"{host!r} in brackets is not an IPv6 address")
    elif ":" in host:
        raise ValueError(f"an IPv6 address goes in brackets: [{host}]:{port}")
    if not port.isascii() or not port.isdigit():
        raise ValueError(f"the port must be a number, got {port!r}")
    number = int(port)
    if number > 65535:
        raise ValueError(f"the port must be 0..65535, got {number}")
    return host, number


def usable_cpus() -> int:
    """CPUs this process may run on (cgroup cpusets and taskset shrink it)."""
    return len(os.sched_getaffinity(0)) or 1


def _describe(error: dict[str, Any], layers: Layers | None = None) -> str:
    key = ".".join(str(part) for part in error["loc"]) or "(top level)"
    # A key a drop-in set is named with that file: "conf.d/10-threads.toml: workers.threads: ...".
    where = layers.dropin_label(error["loc"]) if layers is not None else ""
    if error["type"] == "extra_forbidden":
        return f"{where}{key}: unknown key (check the spelling against config/ipspool.toml)"
    given = error.get("input")
    shown = "" if isinstance(given, dict) else f", got {given!r}"
    return f"{where}{key}: {error['msg']}{shown}"


def parse_config(data: dict[str, Any], source: str = "<config>", spool: str | None = None,
                 layers: Layers | None = None) -> Config:
    """Validate a parsed TOML mapping; ``spool`` overrides spool.dir; ``layers`` names each key's file."""
    if spool is not None:
        data = {**data, "spool": {**data.get("spool", {}), "dir": spool}}
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        problems = tuple(_describe(dict(e), layers) for e in exc.errors())
        raise ConfigError(source, problems) from None


@dataclass(frozen=True)
class LoadedConfig:
    """A validated configuration and where it came from (for check-config and the start-up log)."""

    config: Config
    found: Discovered
    files: tuple[Path, ...] = ()
    ignored: tuple[Ignored, ...] = field(default=())
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def source(self) -> str:
        return self.found.label


def load_discovered(found: Discovered, spool: str | None = None) -> LoadedConfig:
    """Read the discovered main file and its conf.d/ drop-ins, merge and validate them."""
    layers = read_layers(found.path)
    config = parse_config(layers.data, found.label, spool, layers)
    return LoadedConfig(config, found, tuple(layers.files), tuple(layers.ignored), layers.data)


def load_config(path: str | os.PathLike[str] | None, spool: str | None = None) -> Config:
    """Read and validate a TOML file and its drop-ins; ``None`` means built-in defaults (no discovery)."""
    found = Discovered(Path(path), "--config") if path is not None else Discovered(None, "defaults")
    return load_discovered(found, spool).config


SCHEMA_ID = "https://ipspool.invalid/ipspool.schema.json"  # names the schema; nothing is fetched from it


def json_schema() -> dict[str, Any]:
    """A JSON Schema (2020-12) of the configuration file and of each drop-in, from the declarations above.

    Types, defaults, bounds, enums and descriptions come from the fields; what
    only a validator can check (executor.kind = "dask" needs a scheduler, a
    list file must exist) is left to ``ipspool check-config``.
    docs/ipspool.schema.json is this, written by ``ipspool check-config --schema``.
    """
    schema = Config.model_json_schema(mode="validation")
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": "ipspool configuration",
        "description": "/etc/ipspool/ipspool.toml and conf.d/*.toml (every key optional; see docs/configuration.md)",
        **{key: value for key, value in schema.items() if key != "title"},
    }


def with_log_level(config: Config, level: str | None) -> Config:
    """``config`` with ``log.level`` replaced (``ipspool run -v``/``-q``/``--log-level``); None: unchanged."""
    if level is None:
        return config
    return config.model_copy(update={"log": config.log.model_copy(update={"level": level})})


def load_for(cli_path: str | None, spool: str | None = None) -> LoadedConfig:
    """The configuration a command runs on: the discovery rule of ``ipspool.configfiles``, then load."""
    return load_discovered(discover(cli_path), spool)
