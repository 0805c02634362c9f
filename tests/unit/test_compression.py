"""compression: kinds by magic bytes, streamed expansion, and each way a stream can be refused."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from ipspool.compression import CorruptInput, NoRoom, TooLarge, decompressed_name, expand, sniff
from tests.support.compressed import COMPRESSORS, compress

DATA = b"".join(b"198.51.100.%d\n" % (i % 256) for i in range(50_000))


def expand_bytes(tmp_path: Path, blob: bytes, **kwargs: object) -> bytes:
    src = tmp_path / "in"
    src.write_bytes(blob)
    kind = sniff(blob[:6])
    assert kind is not None
    fd = os.open(src, os.O_RDONLY)
    try:
        expand(kind, fd, str(tmp_path / "out"), limit=kwargs.pop("limit", 1 << 30), **kwargs)  # type: ignore[arg-type]
    finally:
        os.close(fd)
    return (tmp_path / "out").read_bytes()


@pytest.mark.parametrize("kind", COMPRESSORS)
def test_each_kind_is_known_by_its_bytes_and_expands_whole(tmp_path: Path, kind: str) -> None:
    """Several gzip members and zstd frames are one stream; the output is the original bytes."""
    blob = compress(kind, DATA)
    assert sniff(blob[:6]) == kind
    assert expand_bytes(tmp_path, blob) == DATA


@pytest.mark.parametrize("head", [b"", b"1.2.3.4\n", b"BZh\n", b"BZhx", b"\x1f", b"# BZh9"])
def test_plain_text_is_not_taken_for_compression(head: bytes) -> None:
    """Text that only starts like a magic number (or is too short for one) is plain."""
    assert sniff(head) is None


@pytest.mark.parametrize("kind", COMPRESSORS)
def test_a_truncated_stream_is_corrupt_and_leaves_no_output(tmp_path: Path, kind: str) -> None:
    """Cut anywhere: CorruptInput naming the kind, and the partial output removed."""
    blob = compress(kind, DATA)
    with pytest.raises(CorruptInput) as caught:
        expand_bytes(tmp_path, blob[: len(blob) - 10])
    assert caught.value.reason == "corrupt_compressed" and kind in caught.value.detail
    assert not (tmp_path / "out").exists()


def test_output_past_the_limit_is_a_bomb_and_leaves_no_output(tmp_path: Path) -> None:
    """decompressed_too_large once the output passes the limit; nothing stays."""
    with pytest.raises(TooLarge) as caught:
        expand_bytes(tmp_path, compress("gzip", DATA), limit=len(DATA) - 1)
    assert caught.value.reason == "decompressed_too_large"
    assert not (tmp_path / "out").exists()
    assert expand_bytes(tmp_path, compress("gzip", DATA), limit=len(DATA)) == DATA  # exactly the limit is fine


def test_under_the_free_space_floor_is_no_room(tmp_path: Path) -> None:
    """keep_free larger than the filesystem: NoRoom (retried by the daemon), no output."""
    with pytest.raises(NoRoom):
        expand_bytes(tmp_path, compress("xz", DATA), keep_free=1 << 60)
    assert not (tmp_path / "out").exists()


def test_an_abandoned_expansion_stops_and_leaves_no_output(tmp_path: Path) -> None:
    """A stop sets the event: InterruptedError before the next piece."""
    stop = threading.Event()
    stop.set()
    with pytest.raises(InterruptedError):
        expand_bytes(tmp_path, compress("zstd", DATA), abandon=stop)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("name", "read_as"), [
    ("fw.csv.gz", "fw.csv"), ("FW.CSV.GZ", "FW.CSV"), ("x.jsonl.zst", "x.jsonl"), ("x.log.zstd", "x.log"),
    ("a.txt.bz2", "a.txt"), ("a.xz", "a"), ("export.gzip", "export"),
    ("plain.txt", "plain.txt"), (".gz", ".gz"), ("gz", "gz"), ("a.tar.gz", "a.tar"), ("a.gz.txt", "a.gz.txt"),
])
def test_a_compressed_input_is_read_by_its_name_without_the_compression_suffix(name: str, read_as: str) -> None:
    """Rules and extensions see the name of the content: one compression suffix off, never the whole name."""
    assert decompressed_name(name) == read_as
