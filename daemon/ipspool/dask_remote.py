"""What runs on a Dask worker: the installed pipeline and the chunk task.

``PipelineBundle`` is a loaded configuration's pipeline in portable form:
the configuration and the bytes of every data file it names (CIDR lists,
MaxMind databases). ``PipelinePlugin`` (a Dask ``WorkerPlugin``) carries a
bundle to every worker once, including workers that join later: it writes
the files under the worker's local directory, points a copy of the
configuration at them and loads the pipeline with the daemon's own
``load_pipeline``. Nothing has to be copied to the worker hosts by hand,
and no task carries more than its chunk's bytes.

Bundles are versioned. A reload or a data refresh installs a new version
under the same plugin name (replacing the old one on every worker), and
every task names the version it needs: ``run_chunk`` refuses to run on an
older pipeline (``StalePipeline``), so a chunk is never processed with
stale settings or lists.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distributed import WorkerPlugin, get_worker

from ipspool.config import Config
from ipspool.formats import Format, process_chunk
from ipspool.pipeline import Pipeline, load_pipeline
from ipspool.protocol import Alert
from ipspool.stages._files import FileStamp, stamp_path

__all__ = ["PLUGIN_NAME", "STARTED_TOPIC", "PipelineBundle", "PipelinePlugin", "StalePipeline", "bundle", "run_chunk"]

PLUGIN_NAME = "ipspool-pipeline"
STARTED_TOPIC = "ipspool-started"  # a task tells the daemon it began, and on which worker


class StalePipeline(Exception):
    """This worker's pipeline is older than the one the chunk needs."""


@dataclass(frozen=True)
class PipelineBundle:
    version: int
    config: Config
    files: dict[str, bytes]  # path in the daemon's configuration -> contents
    stamps: dict[str, FileStamp | None] = field(default_factory=dict)  # what each file was when read

    def changed(self) -> bool:
        """A data file was replaced or rewritten since it was read."""
        return any(stamp_path(path) != stamp for path, stamp in self.stamps.items())


def _data_paths(config: Config) -> list[str]:
    paths = [item.path for item in config.lists] if "lists" in config.pipeline.stages else []
    if "geoip" in config.pipeline.stages:
        paths += [p for p in (config.geoip.country_db, config.geoip.asn_db) if p]
    return paths


def bundle(config: Config, version: int) -> PipelineBundle:
    """Read every data file the pipeline needs (OSError if one cannot be read)."""
    files: dict[str, bytes] = {}
    stamps: dict[str, FileStamp | None] = {}
    for path in _data_paths(config):
        stamps[path] = stamp_path(path)  # before reading: a change in between is seen next time
        with open(path, "rb") as handle:
            files[path] = handle.read()
    return PipelineBundle(version, config, files, stamps)


def localized(config: Config, files: dict[str, str]) -> Config:
    """``config`` with each data file path replaced by its copy (``files``: old -> new)."""
    lists = tuple(item.model_copy(update={"path": files.get(item.path, item.path)}) for item in config.lists)
    geoip = config.geoip.model_copy(update={
        "country_db": files.get(config.geoip.country_db, config.geoip.country_db),
        "asn_db": files.get(config.geoip.asn_db, config.geoip.asn_db),
    })
    return config.model_copy(update={"lists": lists, "geoip": geoip})


class PipelinePlugin(WorkerPlugin):
    """Installs one bundle on a worker; ``pipeline`` is what tasks use."""

    name = PLUGIN_NAME

    def __init__(self, package: PipelineBundle) -> None:
        self.package = package
        self.version = package.version
        self.pipeline: Pipeline | None = None
        self.directory = ""

    def setup(self, worker: Any) -> None:
        self.directory = os.path.join(worker.local_directory, "ipspool", f"v{self.version}")
        os.makedirs(self.directory, exist_ok=True)
        copies: dict[str, str] = {}
        for index, (path, data) in enumerate(self.package.files.items()):
            copy = os.path.join(self.directory, f"{index}-{os.path.basename(path)}")
            Path(copy).write_bytes(data)
            copies[path] = copy
        self.pipeline = load_pipeline(localized(self.package.config, copies), "<dask bundle>")

    def teardown(self, worker: Any) -> None:
        # Not closed: a task thread may still be inside this pipeline. The
        # readers are released with the last reference (geoip.py says how).
        self.pipeline = None
        shutil.rmtree(self.directory, ignore_errors=True)


def run_chunk(token: str, data: bytes, first_line: int, version: int, limit: int, fmt: Format | None = None,
              first_chunk: bool = True) -> tuple[bytes, dict[str, int], list[Alert]]:
    """The task: ``formats.process_chunk`` on this worker's pipeline of at least ``version``.

    ``limit``: result bytes allowed (the output ratio); a larger result is
    not sent back, only its size (the daemon fails the file).
    """
    worker = get_worker()
    plugin = worker.plugins.get(PLUGIN_NAME)
    pipeline: Pipeline | None = getattr(plugin, "pipeline", None)
    have: int = getattr(plugin, "version", 0)
    if pipeline is None or have < version:
        raise StalePipeline(f"worker {worker.address} has pipeline version {have}, the chunk needs {version}")
    worker.log_event(STARTED_TOPIC, {"token": token, "worker": worker.address})
    alerts: list[Alert] = []
    out, counts = process_chunk(data, first_line, pipeline, alerts, fmt, first_chunk)
    if len(out) > limit:
        return b"", {"result_bytes": len(out)}, []
    return out, dict(counts), alerts[:pipeline.alert_cap]
