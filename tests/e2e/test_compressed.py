"""Compressed inputs through the real daemon: known by content, decompressed once, split, failed with a reason."""

from __future__ import annotations

import signal
from collections.abc import Callable

import pytest

from tests.support.compressed import COMPRESSORS, compress
from tests.support.daemon import Daemon


def lines_of(n: int) -> bytes:
    return b"".join(b"10.%d.%d.%d\n" % (i >> 16 & 255, i >> 8 & 255, i & 255) if i % 41 else b"bogus\n"
                    for i in range(n))


def parts_left(d: Daemon) -> list[str]:
    return [p.name for p in (d.results / ".parts").rglob("*") if p.is_file()]


@pytest.mark.parametrize("kind", COMPRESSORS)
def test_compressed_input_gives_the_plain_result_split_across_workers(make_daemon: Callable[..., Daemon],
                                                                      kind: str) -> None:
    """A gzip/bzip2/xz/zstd file (named .txt: content decides) gives the same result as its plain text,
    split into many chunks; the compressed input goes to done/ and no copy is left."""
    d = make_daemon(workers={"chunk_bytes": 8192})
    d.start()
    data = lines_of(30_000)
    d.drop("plain.txt", data)
    packed = compress(kind, data)
    d.drop("packed.txt", packed)
    expected = d.result_path("plain.txt")
    d.wait_result("plain.txt")
    d.wait_result("packed.txt")
    assert d.result_path("packed.txt").read_bytes() == expected.read_bytes()
    event = d.wait_event("file.decompressed", where=lambda e: e["file"] == "packed.txt")
    assert event["compression"] == kind and event["decompressed_bytes"] == len(data)
    claimed = d.wait_event("file.claimed", where=lambda e: e["file"] == "packed.txt")
    assert claimed["compression"] == kind
    done = d.wait_event("file.done", where=lambda e: e["file"] == "packed.txt")
    assert done["chunks"] > 10
    assert (d.spool / "done" / "packed.txt").read_bytes() == packed
    assert parts_left(d) == []
    assert d.stop() == 0


@pytest.mark.parametrize("kind", COMPRESSORS)
def test_truncated_stream_goes_to_failed_with_no_partial_result(make_daemon: Callable[..., Daemon],
                                                                kind: str) -> None:
    """A stream cut in half fails as corrupt_compressed; no result, no part, no copy is left."""
    d = make_daemon()
    d.start()
    whole = compress(kind, lines_of(60_000))
    d.drop("cut.log", whole[: len(whole) // 2 + 7])
    failure = d.wait_failed("cut.log")
    assert failure["reason"] == "corrupt_compressed" and kind in failure["detail"]
    assert failure["compression"] == kind
    event = d.wait_event("file.failed", where=lambda e: e["file"] == "cut.log")
    assert event["reason"] == "corrupt_compressed"
    assert not d.result_path("cut.log").exists()
    assert (d.spool / "failed" / "cut.log").exists() and parts_left(d) == []
    assert d.stop() == 0


def test_gzip_with_trailing_garbage_is_corrupt(make_daemon: Callable[..., Daemon]) -> None:
    """Bytes after the last gzip member that are not another member: corrupt_compressed, not a partial result."""
    d = make_daemon()
    d.start()
    d.drop("tail.gz", compress("gzip", lines_of(100)) + b"not gzip at all")
    assert d.wait_failed("tail.gz")["reason"] == "corrupt_compressed"
    assert not d.result_path("tail.gz").exists()
    assert d.stop() == 0


def test_decompression_bomb_stops_at_the_cap(make_daemon: Callable[..., Daemon]) -> None:
    """A small file that expands past spool.max_decompressed_bytes goes to failed/ as decompressed_too_large."""
    d = make_daemon(spool={"max_decompressed_bytes": 1 << 20})
    d.start()
    bomb = compress("zstd", b"\n" * (64 << 20))  # 64 MiB of blank lines in a few KiB
    assert len(bomb) < 100_000
    d.drop("bomb.zst", bomb)
    failure = d.wait_failed("bomb.zst")
    assert failure["reason"] == "decompressed_too_large"
    assert "spool.max_decompressed_bytes=1048576" in failure["detail"]
    d.drop("fine.gz", compress("gzip", lines_of(1000)))
    assert len(d.wait_result("fine.gz")) == 1000  # the cap is per file
    assert parts_left(d) == []
    assert d.stop() == 0


def test_no_room_to_decompress_waits_and_a_stop_leaves_the_input_for_the_next_start(
        make_daemon: Callable[..., Daemon]) -> None:
    """Under the alerts.disk_low_bytes floor the decompression is retried (disk.full, not failed/); TERM then
    stops at once leaving the input in active/ and no copy; the next start with room completes it."""
    d = make_daemon(alerts={"disk_low_bytes": 1 << 50})
    d.start()
    data = lines_of(5000)
    d.drop("wait.xz", compress("xz", data))
    full = d.wait_event("disk.full", where=lambda e: e["reason"] == "decompress")
    assert "disk_low_bytes" in full["detail"]
    d.wait_event("disk.retry", where=lambda e: e.get("step") == "decompress")
    assert (d.spool / "active" / "wait.xz").exists()
    d.signal(signal.SIGTERM)
    assert d.stop() == 0
    assert (d.spool / "active" / "wait.xz").exists()
    assert not d.result_path("wait.xz").exists() and parts_left(d) == []
    d.write_config(alerts={"disk_low_bytes": 0})
    d.start()
    recovered = d.wait_event("file.recovered", where=lambda e: e["file"] == "wait.xz")
    assert recovered["action"] == "reprocess"
    assert len(d.wait_result("wait.xz")) == 5000
    assert d.stop() == 0


def test_term_while_a_large_copy_is_written_stops_and_leaves_the_input_claimed(
        make_daemon: Callable[..., Daemon]) -> None:
    """TERM right after the claim of a file that expands to 512 MiB: exit 0 (the copy is abandoned, or the
    chunks stop), the input stays in active/ for the next start, no copy, part or result is left."""
    d = make_daemon()
    d.start()
    d.drop("huge.zst", compress("zstd", b"\n" * (512 << 20)))
    d.wait_event("file.claimed", where=lambda e: e["file"] == "huge.zst")
    d.signal(signal.SIGTERM)
    assert d.stop() == 0
    assert (d.spool / "active" / "huge.zst").exists()
    assert not d.result_path("huge.zst").exists() and parts_left(d) == []
    assert not (d.results / "huge.zst.summary.json").exists()
