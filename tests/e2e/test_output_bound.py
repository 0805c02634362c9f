"""Results are bounded by their input: spool.max_output_ratio, end to end."""

from __future__ import annotations

from collections.abc import Callable

from tests.support.daemon import Daemon


def test_records_outgrowing_the_output_ratio_fail_the_file_and_leave_no_partial_result(
    make_daemon: Callable[..., Daemon],
) -> None:
    """2-byte junk lines make ~40-byte error records: over a ratio of 16 the file fails, nothing half-written."""
    d = make_daemon(spool={"max_output_ratio": 16}, workers={"processes": 2, "threads": 2, "chunk_bytes": 1 << 16})
    d.start()
    d.drop("junk.txt", b"a\n" * 200_000)            # 400 KB in: ~8 MB of error records
    d.drop("fine.txt", b"192.0.2.1\n" * 20_000)    # ~10x its input: under the ratio
    error = d.wait_failed("junk.txt")
    assert error["reason"] == "result_too_large"
    assert "spool.max_output_ratio" in error["detail"]
    assert len(d.wait_result("fine.txt")) == 20_000
    assert not d.result_path("junk.txt").exists()
    assert d.stop() == 0
    assert list((d.results / ".parts").iterdir()) == []


def test_a_single_chunk_file_over_the_ratio_fails_too(make_daemon: Callable[..., Daemon]) -> None:
    """The inline path (one chunk, no pool) checks the same bound as it writes."""
    d = make_daemon(spool={"max_output_ratio": 1}, workers={"processes": 1})
    d.start()
    d.drop("small.txt", b"a\n" * 50_000)  # 100 KB in: 100 KB + 64 KiB allowed, ~2 MB of records
    assert d.wait_failed("small.txt")["reason"] == "result_too_large"
    assert d.stop() == 0
    assert list((d.results / ".parts").iterdir()) == []
