"""A result is only ever published for the input that was read: a rewrite after the claim is seen."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from ipspool.spool import Spool
from tests.support.daemon import Daemon


def test_rewrite_that_restores_size_and_mtime_is_still_seen(tmp_path: Path) -> None:
    """Same size, mtime put back with utime: the ctime moved, so Spool.changed says why."""
    spool = Spool(tmp_path / "spool", tmp_path / "results")
    spool.create()
    spool.open()
    try:
        (spool.root / "incoming" / "f").write_bytes(b"1.1.1.1\n")
        job = spool.claim("f")
        assert job is not None
        claimed = spool.inspect("f", job, 1 << 20)
        assert spool.changed(claimed) is None
        path = spool.root / "active" / job
        before = path.stat()
        path.write_bytes(b"6.6.6.6\n")
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
        after = path.stat()
        assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
        assert spool.changed(claimed) is not None
    finally:
        spool.close()


def test_producer_rewriting_its_file_after_the_claim_at_the_same_size_gets_no_result(
    make_daemon: Callable[..., Daemon],
) -> None:
    """The real daemon: a producer that keeps its descriptor, rewrites and resets the mtime: failed/ changed."""
    d = make_daemon(workers={"threads": 2}, pipeline={"stages": ["classify", "tests.support.stagelib:slow"]})
    d.start()
    body = "".join(f"10.1.{i // 250}.{i % 250}\n" for i in range(300)).encode()
    tmp = d.spool / "tmp" / "sneaky.txt"
    tmp.write_bytes(body)
    fd = os.open(tmp, os.O_RDWR)
    try:
        os.rename(tmp, d.spool / "incoming" / "sneaky.txt")
        d.wait_event("file.claimed", where=lambda e: e["file"] == "sneaky.txt")
        before = os.fstat(fd)
        os.pwrite(fd, b"6.6.6.6\n".ljust(len(body) - 1, b"#") + b"\n", 0)
        os.utime(fd, ns=(before.st_atime_ns, before.st_mtime_ns))
    finally:
        os.close(fd)
    failure = d.wait_failed("sneaky.txt")
    assert failure["reason"] == "changed"
    assert not d.result_path("sneaky.txt").exists()
    assert d.stop() == 0
