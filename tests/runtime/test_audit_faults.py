"""Issue 14, findings 2 and 10: audit appends that cannot tear.

A short ``os.write`` (disk full) used to be ignored: a partial record, exit 0, the head advanced, and
the next append landed on the torn line, so the audit never verified again. Now a short or failed
write, fsync or head write cuts the log back to its last good record and raises; a process killed
mid-append is recovered by the next append (or ``aitasks audit repair``) without reusing a seq.
"""

from __future__ import annotations

import errno
import multiprocessing as mp
import os
import random
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from aitasks.runtime import audit as audit_mod
from aitasks.runtime.audit import AuditLog, AuditWriteError

KEY = "k" * 40


def _log(root: Path, n: int = 3) -> AuditLog:
    log = AuditLog(root / "audit", root / "head-root" / "HEAD", key=KEY)
    for i in range(n):
        log.append({"task": "t", "i": i})
    return log


def _state(log: AuditLog) -> tuple[bytes, tuple[int, str] | None]:
    return log.log_path.read_bytes(), log.read_head()


def _short_then_full(monkeypatch: pytest.MonkeyPatch) -> None:
    """``os.write`` as on a full disk: the first call writes half the buffer, the next raises ENOSPC."""
    real = os.write
    calls = {"n": 0}

    def write(fd: int, data: Any) -> int:
        calls["n"] += 1
        if calls["n"] == 1:
            return real(fd, bytes(data)[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", write)


def test_short_write_is_cut_back_and_fails_the_append(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = _log(tmp_path)
    before = _state(log)
    with monkeypatch.context() as m:
        _short_then_full(m)
        with pytest.raises(AuditWriteError, match="back at record 2"):
            log.append({"task": "disk-full"})
    assert _state(log) == before  # no partial line, head not advanced
    rep = log.verify()
    assert rep.ok and rep.notes == [], rep
    assert log.append({"task": "after"})["seq"] == 3 and log.verify().ok


def test_a_write_of_zero_bytes_is_not_taken_for_success(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = _log(tmp_path)
    before = _state(log)
    with monkeypatch.context() as m:
        m.setattr(os, "write", lambda fd, data: 0)
        with pytest.raises(AuditWriteError):
            log.append({"task": "zero"})
    assert _state(log) == before and log.verify().ok


@pytest.mark.parametrize("failing", ["fsync", "head"])
def test_fsync_or_head_failure_is_cut_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str) -> None:
    log = _log(tmp_path)
    before = _state(log)
    with monkeypatch.context() as m:
        if failing == "fsync":
            m.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.EIO, "I/O error")))
        else:
            real = os.pwrite

            def pwrite(fd: int, data: bytes, offset: int) -> int:
                real(fd, data[:40], offset)  # a torn head slot
                raise OSError(errno.ENOSPC, "No space left on device")

            m.setattr(os, "pwrite", pwrite)
        with pytest.raises(AuditWriteError):
            log.append({"task": failing})
    assert log.log_path.read_bytes() == before[0] and log.read_head() == before[1]
    assert log.verify().ok and log.append({"task": "after"})["seq"] == 3 and log.verify().ok


def test_a_task_whose_audit_cannot_be_written_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from aitasks.runtime.settings import Settings
    from aitasks.runtime.task import RunContext, Runtime
    from tests.runtime._tasks import scale_task

    src = tmp_path / "numbers.txt"
    src.write_text("1 2 3")
    rt = Runtime.create(
        Settings(storage_root=str(tmp_path / "store"), input_roots=str(tmp_path)), run=RunContext(run_id="full")
    )
    with monkeypatch.context() as m:
        _short_then_full(m)
        with pytest.raises(AuditWriteError):
            scale_task({"source": str(src), "factor": 2.0}, runtime=rt)
    assert rt.audit.verify().ok


# ------------------------------------------------------------------ a real full filesystem
@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    try:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)],
            check=False,
            capture_output=True,
            text=True,
            timeout=20,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"cannot mount a tmpfs here ({exc}): the monkeypatched short-write tests cover this")
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root / CAP_SYS_ADMIN): {done.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False, timeout=20)


def test_full_tmpfs_never_tears_the_audit(tiny_fs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real, short = os.write, []

    def write(fd: int, data: Any) -> int:
        n = real(fd, data)
        if n < len(data):
            short.append((len(data), n))
        return n

    monkeypatch.setattr(os, "write", write)
    log = AuditLog(tiny_fs / "audit", key=KEY)
    payload = "x" * 3000  # not page aligned: the last write that fits is a short one
    written, failures = 0, 0
    for i in range(100):
        try:
            log.append({"task": "fill", "i": i, "payload": payload})
            written += 1
        except AuditWriteError:
            failures += 1
            if failures == 3:
                break
    assert failures == 3 and written > 5, (written, failures)
    assert short, "the kernel never returned a short write: the test did not reach the torn case"
    raw = log.log_path.read_bytes()
    assert raw.endswith(b"\n") and raw.count(b"\n") == written
    rep = log.verify()
    assert rep.ok and rep.records == written and rep.head_seq == written - 1, rep
    with pytest.raises(AuditWriteError, match="bytes free"):
        log.check_space()
    log.close()


def test_full_tmpfs_then_space_freed_continues_the_chain(tiny_fs: Path) -> None:
    filler = tiny_fs / "filler"
    log = AuditLog(tiny_fs / "audit", key=KEY)
    log.append({"task": "first"})
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)  # another tenant fills the volume
    try:
        while os.write(fd, b"\0" * 512) > 0:
            pass
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)
    with pytest.raises(AuditWriteError):
        for i in range(20):
            log.append({"task": "t", "i": i, "payload": "y" * 1500})
    assert log.verify().ok
    filler.unlink()
    rec = log.append({"task": "after"})
    rep = log.verify()
    assert rep.ok and rec["seq"] == rep.head_seq == rep.records - 1
    log.close()


# ------------------------------------------------------------------ real SIGKILLs mid-append
def _die_before_head(root: str, head: str) -> None:
    AuditLog._write_head = lambda self, seq, digest: os.kill(os.getpid(), signal.SIGKILL)  # type: ignore[method-assign,assignment]
    AuditLog(Path(root), Path(head), key=KEY).append({"task": "killed"})


def _die_mid_line(root: str, head: str) -> None:
    def half(fd: int, data: bytes) -> None:
        os.write(fd, data[: len(data) // 2])
        os.kill(os.getpid(), signal.SIGKILL)

    audit_mod._write_all = half  # type: ignore[assignment]
    AuditLog(Path(root), Path(head), key=KEY).append({"task": "killed"})


@pytest.mark.parametrize("where", [_die_before_head, _die_mid_line])
def test_sigkill_mid_append_is_recovered_by_the_next_append(tmp_path: Path, where: Any) -> None:
    log = _log(tmp_path)
    p = mp.get_context("fork").Process(target=where, args=(str(log.root), str(log.head_path)))
    p.start()
    p.join(30)
    assert p.exitcode == -signal.SIGKILL
    rep = log.verify()
    assert rep.ok and rep.notes, rep  # a pending repair, not a false alarm
    rec = AuditLog(log.root, log.head_path, key=KEY).append({"task": "next"})
    recs = log.records()
    assert rec["seq"] == len(recs) - 1 and [r["seq"] for r in recs] == list(range(len(recs)))
    rep = log.verify()
    assert rep.ok and rep.notes == [], rep


def _append_forever(root: str, head: str) -> None:
    log = AuditLog(Path(root), Path(head), key=KEY)
    i = 0
    while True:
        log.append({"task": "loop", "i": i, "payload": "z" * 4000})
        i += 1


def test_random_sigkills_during_appends_never_break_the_chain(tmp_path: Path) -> None:
    root, head = tmp_path / "audit", tmp_path / "head-root" / "HEAD"
    rng = random.Random(14)
    ctx = mp.get_context("fork")
    for _ in range(8):
        p = ctx.Process(target=_append_forever, args=(str(root), str(head)))
        p.start()
        time.sleep(rng.uniform(0.01, 0.08))
        assert p.pid is not None
        os.kill(p.pid, signal.SIGKILL)  # our own child, by its pid
        p.join(30)
        log = AuditLog(root, head, key=KEY)
        assert log.verify().ok, log.verify().problems
        rec = log.append({"task": "survivor"})
        recs = log.records()
        assert rec["seq"] == len(recs) - 1 and [r["seq"] for r in recs] == list(range(len(recs)))
        assert log.verify().ok and log.verify().notes == []
        log.close()


def test_a_full_audit_volume_fails_the_task_before_its_result_commits(
    tiny_fs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The result is not committed when its audit record might not follow (issue 14, finding 10).

    The volume keeps room for the ``started`` record but less than the commit threshold: the task fails
    at the space check, before its commit, so a rerun executes instead of reusing an unaudited result.
    """
    from aitasks.runtime.settings import Settings
    from aitasks.runtime.task import RunContext, Runtime
    from tests.runtime._tasks import scale_task

    monkeypatch.setattr(audit_mod, "MIN_FREE_BYTES", 32 * 1024)
    src = tmp_path / "n.txt"
    src.write_text("1 2 3")
    settings = Settings(
        storage_root=str(tmp_path / "store"),
        audit_root=str(tiny_fs / "audit"),
        audit_key=KEY,
        input_roots=(str(tmp_path),),
    )
    rt = Runtime.create(settings, run=RunContext(run_id="full"))
    filler = tiny_fs / "filler"
    with filler.open("wb") as fh:  # another tenant leaves less than the threshold free
        while (st := os.statvfs(tiny_fs)).f_bavail * st.f_frsize >= 24 * 1024:
            fh.write(b"\0" * 4096)
            fh.flush()
    with pytest.raises(AuditWriteError, match="refusing to commit"):
        scale_task({"source": str(src), "factor": 2.0}, runtime=rt)
    assert not list((tmp_path / "store" / "_idempotency").rglob("*.json")), "nothing committed"
    assert rt.audit.records()[0]["status"] == "started"
    filler.unlink()
    rt = Runtime.create(settings, run=RunContext(run_id="after"))
    assert scale_task({"source": str(src), "factor": 2.0}, runtime=rt).total == 12.0
    outcomes = [r.get("outcome") for r in rt.audit.records() if r["status"] == "succeeded"]
    assert outcomes == ["executed"], "the rerun executed (no unaudited commit to reuse)"
    assert rt.audit.verify().ok
