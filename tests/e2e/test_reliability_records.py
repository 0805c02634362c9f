"""Result and error records are bounded and written whole."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from ipspool.pipeline import Pipeline, load_pipeline, process_chunk
from ipspool.spool import Spool

# -- bounded error records (issue 9) ------------------------------------------------


@pytest.fixture(scope="module")
def classify_only() -> Pipeline:
    from ipspool.config import load_config

    config = load_config(None, spool="/nonexistent")
    return load_pipeline(config)


@pytest.mark.parametrize("line", [
    "a" * 4000,                      # "Expected 4 octets in '<line>'"
    "1.2.3." + "9" * 3990,           # "At most 3 characters permitted in '<octet>' in '<line>'"
    "::" + "g" * 3990,               # IPv6: "Only hex digits permitted in '<part>' in '<line>'"
    "\x01" * 4000,                   # every character escaped by JSON: six bytes each
])
def test_an_error_record_is_bounded_whatever_the_line(classify_only: Pipeline, line: str) -> None:
    """`input` at most 200 characters, `error` at most 256: under 3 KB a record."""
    out, counts = process_chunk(line.encode() + b"\n", 1, classify_only)
    assert counts["invalid"] == 1
    record = json.loads(out)
    assert len(record["input"]) <= 200 and len(record["error"]) <= 256
    assert record["error"].startswith("not an IP address: ") and record["error"].endswith("...")
    assert len(out) < 3000


def test_a_short_error_message_is_kept_whole(classify_only: Pipeline) -> None:
    """Messages under the cap are untouched."""
    out, _ = process_chunk(b"010.1.1.1\n", 1, classify_only)
    assert json.loads(out)["error"] == "not an IP address: Leading zeros are not permitted in '010' in '010.1.1.1'"


# -- error records in failed/ ----------------------------------------------------------


def test_error_record_is_written_whole_despite_short_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """write(2) returning after 7 bytes each time: failed/JOB.error.json is still the whole record."""
    spool = Spool(tmp_path / "spool", tmp_path / "results")
    spool.create()
    spool.open()
    try:
        (spool.root / "incoming" / "f").write_bytes(b"1.1.1.1\n")
        job = spool.claim("f")
        assert job is not None
        real = os.write
        monkeypatch.setattr(os, "write", lambda fd, data: real(fd, bytes(data[:7])))
        spool.fail(job, "too_large", "x" * 500, {"file": "f"})
        monkeypatch.undo()
        record = json.loads((spool.root / "failed" / "f.error.json").read_text())
        assert record["detail"] == "x" * 500 and record["job"] == "f"
    finally:
        spool.close()
