"""Start-up recovery: a full disk does not crash-loop it, a planted result is not proof of publication."""

from __future__ import annotations

import errno
import json
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from ipspool.protocol import Done
from ipspool.recovery import recover
from ipspool.spool import Spool
from ipspool.supervisor import Supervisor
from tests.support.daemon import Daemon, wait_for


@pytest.fixture
def spool(tmp_path: Path) -> Iterator[Spool]:
    s = Spool(tmp_path / "spool", tmp_path / "results")
    s.create()
    s.open()
    yield s
    s.close()


# -- a planted result (issue 5) --------------------------------------------------


def plant(kind: str, path: Path, root: Path) -> None:
    victim = root / "victim"
    victim.write_text("precious\n")
    if kind == "symlink":
        path.symlink_to(victim)
    elif kind == "hard_link":
        os.link(victim, path)
    elif kind == "other_user":
        path.write_text('{"line": 1}\n')
        os.chown(path, 65534, 65534)
    else:
        path.mkdir()


@pytest.mark.parametrize("kind", ["symlink", "hard_link", "other_user", "directory"])
def test_recovery_fails_a_job_whose_result_name_holds_a_file_we_did_not_write(
    spool: Spool, tmp_path: Path, kind: str,
) -> None:
    """Not a regular single-link file of ours at results/JOB.jsonl: result_exists, never retired."""
    if kind == "other_user" and os.geteuid() != 0:
        pytest.skip("needs root to give the file to another user")
    (spool.root / "active" / "x.txt").write_text("1.1.1.1\n")
    plant(kind, spool.results / "x.txt.jsonl", tmp_path)
    with capture_logs() as logs:
        assert recover(spool, keep=True) == ([], [], [])
    assert not (spool.root / "done" / "x.txt").exists()
    assert (spool.root / "failed" / "x.txt").read_text() == "1.1.1.1\n"
    record = json.loads((spool.root / "failed" / "x.txt.error.json").read_text())
    assert record["reason"] == "result_exists" and record["job"] == "x.txt"
    assert (tmp_path / "victim").read_text() == "precious\n"
    (event,) = [e for e in logs if e["event"] == "file.failed"]
    assert event["reason"] == "result_exists" and event["file"] == "x.txt"


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_recovery_retires_a_result_of_ours(spool: Spool, suffix: str) -> None:
    """A regular single-link file of ours, JSON lines or CSV (output = "csv"), is taken as published."""
    (spool.root / "active" / "y.txt").write_text("1.1.1.1\n")
    (spool.results / f"y.txt{suffix}").write_text('{"line": 1}\n')
    assert recover(spool, keep=True) == ([], ["y.txt"], [])
    assert (spool.root / "done" / "y.txt").exists()


def test_a_csv_result_name_is_taken_like_a_jsonl_one(spool: Spool) -> None:
    """results/x.csv holds the name x: the next x is claimed as x.1, whatever its output format."""
    (spool.results / "x.csv").write_text("line\n")
    (spool.root / "incoming" / "x").write_text("1.1.1.1\n")
    assert spool.claim("x") == "x.1"


def test_planted_symlink_at_a_result_name_before_a_restart_is_not_taken_as_published(
    make_daemon: Callable[..., Daemon],
) -> None:
    """The real daemon: active/NAME beside a planted results/NAME.jsonl -> /etc/hostname goes to failed/."""
    d = make_daemon()
    d.spool.mkdir()
    for sub in ("active", "incoming"):
        (d.spool / sub).mkdir()
    d.results.mkdir()
    (d.spool / "active" / "crashed.txt").write_text("1.1.1.1\n")
    (d.results / "crashed.txt.jsonl").symlink_to("/etc/hostname")
    d.start()
    failure = d.wait_failed("crashed.txt")
    assert failure["reason"] == "result_exists"
    wait_for((d.spool / "failed" / "crashed.txt").exists, what="the input in failed/")
    assert not (d.spool / "done" / "crashed.txt").exists()
    assert not any(e["action"] == "retired" for e in d.events("file.recovered"))
    assert (d.results / "crashed.txt.jsonl").is_symlink()
    assert d.stop() == 0


# -- a full spool filesystem (issue 3) ------------------------------------------------


@pytest.fixture
def small_ext4(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB ext4 (1 KiB blocks, nothing reserved) on a loop device; skipped where mount(2) is refused."""
    image, mountpoint = tmp_path / "fs.img", tmp_path / "fs"
    mountpoint.mkdir()
    with open(image, "wb") as handle:
        handle.truncate(4 << 20)
    made = subprocess.run(["mkfs.ext4", "-q", "-F", "-m", "0", "-b", "1024", str(image)],
                          capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot make an ext4 image: {made.stderr.strip()}")
    done = subprocess.run(["mount", "-o", "loop", str(image), str(mountpoint)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a loop device here (needs root): {done.stderr.strip()}")
    yield mountpoint
    subprocess.run(["umount", "-l", str(mountpoint)], check=True)


def fill_directory_block(directory: Path, scratch: Path, length: int) -> None:
    """Fill ``directory``'s only block with entries of ``length`` bytes, so that one more needs a new block."""
    scratch.mkdir()
    size = scratch.stat().st_size
    fits = 0
    while (scratch / f"{fits:0{length}d}").touch() is None and scratch.stat().st_size == size:
        fits += 1
    for i in range(fits):
        (directory / f"{i:0{length}d}").touch()
    for entry in scratch.iterdir():
        entry.unlink()
    scratch.rmdir()


def fill(directory: Path) -> Path:
    """Write (and fsync) a filler file until not one more block fits."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        for size in (65536, 1024):  # large writes first, then the last blocks one by one
            try:
                while True:
                    os.write(fd, b"\0" * size)
                    os.fsync(fd)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)
    return filler


def test_recovery_on_a_full_spool_filesystem_starts_and_retires_once_space_returns(
    make_daemon: Callable[..., Daemon], small_ext4: Path,
) -> None:
    """ENOSPC renaming into done/ at start-up: spool.recover_failed, the daemon runs; retired at the next start."""
    d = make_daemon()
    d.spool = small_ext4 / "spool"
    d.results = d.spool / "results"
    # The runtime directory (authkey, socket) elsewhere: only the spool is full.
    d.write_config(spool={"dir": str(d.spool), "runtime_dir": str(d.root / "run")})
    Spool(d.spool, d.results).create()
    name = "p" * 200  # long entries: done/ needs a new block for it
    fill_directory_block(d.spool / "done", small_ext4 / "scratch", len(name))
    (d.spool / "active" / name).write_text("1.1.1.1\n")
    (d.results / f"{name}.jsonl").write_text('{"line":1,"input":"1.1.1.1"}\n')
    filler = fill(small_ext4)
    d.start()
    failed = d.wait_event("spool.recover_failed")
    assert failed["level"] == "error" and failed["file"] == name and failed["step"] == "retire"
    assert "No space left" in failed["error"]
    assert (d.spool / "active" / name).exists() and not (d.spool / "done" / name).exists()
    assert d.wait_event("spool.run_folder_failed")["level"] == "warning"  # no room for this run's folder either
    assert d.stop() == 0
    filler.unlink()
    d.start()
    recovered = d.wait_event("file.recovered", where=lambda e: e["file"] == name)
    assert recovered["action"] == "retired"
    assert (d.spool / "done" / name).exists() and not (d.spool / "active" / name).exists()
    assert d.stop() == 0


def test_recovery_leaves_an_entry_it_cannot_move_and_goes_on(spool: Spool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Any OSError of one entry's step is logged; the other entries are recovered."""
    import ipspool.spool as spool_module

    for name in ("a", "b"):
        (spool.root / "active" / name).write_text("1.1.1.1\n")
        (spool.results / f"{name}.jsonl").write_text("{}\n")
    real = spool_module.rename_noreplace_at

    def rename(src: str, dst: str, src_dir_fd: int, dst_dir_fd: int) -> None:
        if src == "a":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(src, dst, src_dir_fd, dst_dir_fd)

    monkeypatch.setattr(spool_module, "rename_noreplace_at", rename)
    with capture_logs() as logs:
        assert recover(spool, keep=True) == ([], ["b"], [])
    (event,) = [e for e in logs if e["event"] == "spool.recover_failed"]
    assert event["file"] == "a" and event["step"] == "retire"
    assert (spool.root / "active" / "a").exists()


def test_commit_survives_enospc_retiring_an_input(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The result is published; the input cannot move to done/: spool.retire_failed, the loop goes on."""
    from ipspool.config import load_config
    from ipspool.logs import LogTarget, configure_logging

    configure_logging("debug", "json", role="test", target=LogTarget(str(tmp_path / "log")))
    supervisor = Supervisor(load_config(None, spool=str(tmp_path / "spool")), None)
    supervisor.spool.create()
    supervisor.spool.open()
    try:
        (tmp_path / "spool" / "incoming" / "one").write_bytes(b"1.2.3.4\n")
        supervisor.intake.offer("one", 0.0)
        claim = supervisor.intake.claim_next()
        assert claim is not None
        claimed = supervisor.intake.inspect(*claim)
        assert claimed is not None
        job = supervisor.book.open_job(claimed, supervisor.intake)
        assert job is not None
        chunk = supervisor.book.split_next(job)
        assert chunk is not None
        job.outstanding[chunk.index] = chunk
        part = supervisor.spool.part_path("x.0.part")
        Path(part).write_bytes(b'{"line":1}\n')
        supervisor.book.on_done(Done(chunk.key, part, {"lines": 1}))

        def no_space(*_args: object) -> None:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        monkeypatch.setattr(supervisor.spool, "retire_input", no_space)
        with capture_logs() as logs:
            supervisor.committer.commit()
        assert any(e["event"] == "spool.retire_failed" for e in logs)
        assert (tmp_path / "spool" / "results" / "one.jsonl").exists()
        assert (tmp_path / "spool" / "active" / "one").exists()
    finally:
        supervisor.committer.assembler.shutdown()
        supervisor.spool.close()
