"""Process records: detached start, liveness by PID *and* start time, stop only what we started."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from localattn_dev import procs


def test_start_stop_and_recycled_pid_is_not_ours(tmp_path: Path) -> None:
    record = procs.start(
        tmp_path, "sleeper", [sys.executable, "-c", "import time; print('hi', flush=True); time.sleep(60)"]
    )
    assert procs.alive(record)
    assert procs.load(tmp_path, "sleeper") == record
    # same PID, different start time: a recycled PID must never count as ours (nor be signalled)
    impostor = dataclasses.replace(record, start_ticks=record.start_ticks + 1)
    assert not procs.alive(impostor)
    assert procs.stop(tmp_path, "sleeper") is True
    assert not procs.alive(record)
    assert procs.load(tmp_path, "sleeper") is None
    assert procs.stop(tmp_path, "sleeper") is False  # idempotent
    assert "hi" in Path(record.log).read_text()


def test_stop_escalates_to_sigkill(tmp_path: Path) -> None:
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); time.sleep(60)"
    record = procs.start(tmp_path, "stubborn", [sys.executable, "-c", code])
    log = Path(record.log)
    while "up" not in log.read_text():
        pass
    assert procs.stop(tmp_path, "stubborn", timeout=0.5)
    assert not procs.alive(record)


def test_stop_ends_members_that_outlive_their_leader(tmp_path: Path) -> None:
    """The leader exits on SIGTERM while a child ignores it (an engine core, a load client's worker): `stop`
    still leaves nothing of the session running."""
    import time

    script = "(trap '' TERM; exec sleep 300) & echo started; sleep 300"
    record = procs.start(tmp_path, "family", ["sh", "-c", script])
    deadline = time.monotonic() + 10
    while len(procs.session_members(record)) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    members = procs.session_members(record)
    assert len(members) >= 3, members  # sh, the TERM-ignoring sleep, the leader's own sleep
    assert procs.stop(tmp_path, "family", timeout=5) is True
    deadline = time.monotonic() + 5
    while procs.session_members(record) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert procs.session_members(record) == []


def test_stop_child_escalates_and_signals_the_group_only_when_asked(tmp_path: Path) -> None:
    """`stop_child`: SIGTERM, SIGKILL after the grace for a child that ignores it; `group` reaches the child's
    own children (a load client's `vllm bench serve`), without it they are left alone."""
    import os
    import signal
    import subprocess
    import time

    ready = tmp_path / "ready"
    code = ("import signal, subprocess, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "p = subprocess.Popen(['sleep', '300']); open(sys.argv[1], 'w').write(str(p.pid)); time.sleep(300)")
    for group in (False, True):
        ready.unlink(missing_ok=True)
        proc = subprocess.Popen([sys.executable, "-c", code, str(ready)], start_new_session=True)
        deadline = time.monotonic() + 10
        while not (ready.exists() and ready.read_text()) and time.monotonic() < deadline:
            time.sleep(0.05)
        grandchild = int(ready.read_text())
        started = time.monotonic()
        assert procs.stop_child(proc, grace=0.5, group=group) == -signal.SIGKILL
        assert 0.5 <= time.monotonic() - started < 10
        time.sleep(0.2)
        alive = not procs._is_zombie(grandchild)  # gone counts as a zombie too
        assert alive is not group, (group, alive)
        if alive:
            os.kill(grandchild, signal.SIGKILL)
    assert procs.stop_child(proc) == -signal.SIGKILL  # already gone: its status, nothing signalled
