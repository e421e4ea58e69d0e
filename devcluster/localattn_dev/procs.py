"""Start, track and stop the cluster's processes: only what we started, identified beyond the bare PID.

Each process runs in its own session (it survives the caller and its process group is ours to signal),
logs to `<state>/logs/<name>.log`, and is recorded in `<state>/run/<name>.json` with its start time from
/proc, so a recycled PID is never mistaken for ours and never signalled.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

# Popen objects of the processes this process started: their exit status is read through them (an
# unreferenced Popen would be reaped by subprocess's own cleanup, losing the status).
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


@dataclass(frozen=True)
class ProcRecord:
    name: str
    pid: int
    start_ticks: int
    argv: list[str]
    log: str


def _start_ticks(pid: int) -> int | None:
    """Field 22 of /proc/<pid>/stat: start time since boot; None if the process is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces; fields after it are split on the last ')'.
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[19])


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def alive(record: ProcRecord) -> bool:
    """The recorded process still runs (same PID *and* same start time, not a zombie)."""
    return _start_ticks(record.pid) == record.start_ticks and not _is_zombie(record.pid)


def run_dir(state_dir: Path) -> Path:
    return state_dir / "run"


def load(state_dir: Path, name: str) -> ProcRecord | None:
    path = run_dir(state_dir) / f"{name}.json"
    try:
        return ProcRecord(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None


def load_all(state_dir: Path) -> dict[str, ProcRecord]:
    records: dict[str, ProcRecord] = {}
    for path in sorted(run_dir(state_dir).glob("*.json")):
        record = load(state_dir, path.stem)
        if record is not None:
            records[record.name] = record
    return records


def start(
    state_dir: Path,
    name: str,
    argv: Sequence[str],
    env: Mapping[str, str] | None = None,
    *,
    log_path: Path | None = None,
    cwd: Path | None = None,
    announce: bool = True,
) -> ProcRecord:
    """Start `argv` detached (new session, stdin closed, output to its log) and record it.

    The log defaults to `<state>/logs/<name>.log` and the working directory to the state dir. `announce`
    writes the command line into the log first; a pod's container log does not get it (its expanded args may
    carry values of Secret-sourced env, which kubelet never writes into a container's log either)."""
    run_dir(state_dir).mkdir(parents=True, exist_ok=True)
    if log_path is None:
        (state_dir / "logs").mkdir(parents=True, exist_ok=True)
        log_path = state_dir / "logs" / f"{name}.log"
    with open(log_path, "ab") as log:
        if announce:
            log.write(f"\n=== {time.strftime('%Y-%m-%dT%H:%M:%S')} {' '.join(argv)}\n".encode())
            log.flush()
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=dict(env) if env is not None else None,
            cwd=cwd or state_dir,
        )
    _CHILDREN[proc.pid] = proc
    ticks = _start_ticks(proc.pid)
    record = ProcRecord(name=name, pid=proc.pid, start_ticks=ticks or -1, argv=list(argv), log=str(log_path))
    tmp = run_dir(state_dir) / f".{name}.json.tmp"
    tmp.write_text(json.dumps(asdict(record)))
    tmp.replace(run_dir(state_dir) / f"{name}.json")
    return record


def returncode(record: ProcRecord, wait: float = 0.0) -> int | None:
    """The exit status (Popen convention: -N for signal N) of a process this process started and that has
    exited; None while it runs or when it is not our child (adopted from a previous agent: unknowable).

    `wait`: seconds to wait for it. Needed right after /proc shows a multi-threaded process as a zombie: its
    leader thread is "Z" while the other threads still exit, and it is not waitable until they are gone."""
    proc = _CHILDREN.get(record.pid)
    if proc is None:
        return None
    try:
        return proc.wait(timeout=wait) if wait > 0 else proc.poll()
    except subprocess.TimeoutExpired:
        return None


def forget(state_dir: Path, name: str) -> None:
    """Drop a record (its process is gone)."""
    record = load(state_dir, name)
    if record is not None:
        _CHILDREN.pop(record.pid, None)
    (run_dir(state_dir) / f"{name}.json").unlink(missing_ok=True)


def session_members(record: ProcRecord) -> list[int]:
    """Live processes of the session the recorded process leads (its children, grandchildren...), the
    leader included while it runs. A session id is a PID the kernel does not reuse while the session has
    members, so these are ours even after the leader died."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == record.pid and fields[0] != "Z":  # field 6: session id
            members.append(int(entry.name))
    return members


def session_rss(record: ProcRecord) -> int:
    """Resident memory (bytes) of the whole session: what a container's memory limit is checked against."""
    page = os.sysconf("SC_PAGE_SIZE")
    total = 0
    for pid in session_members(record):
        try:
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * page
        except (OSError, IndexError, ValueError):
            continue
    return total


def session_pss(record: ProcRecord) -> int:
    """Proportional set size (bytes) of the session: shared pages (torch's libraries, mapped by every vLLM
    process) divided among their users, so the sum is the memory the pod really adds to the machine."""
    total = 0
    for pid in session_members(record):
        try:
            rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
        except OSError:
            continue
        for line in rollup.splitlines():
            if line.startswith("Pss:"):
                total += int(line.split()[1]) * 1024
                break
    return total


def kill_session(record: ProcRecord, sig: signal.Signals) -> bool:
    """Signal every live member of the recorded session (the leader may be gone); True if any was left."""
    members = session_members(record)
    for pid in members:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
    return bool(members)


def stop(state_dir: Path, name: str, timeout: float = 10.0) -> bool:
    """SIGTERM the recorded process group, SIGKILL after `timeout`; forget the record. True if it ran."""
    record = load(state_dir, name)
    if record is None:
        return False
    was_alive = alive(record)
    if was_alive:
        _signal_group(record, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while alive(record) and time.monotonic() < deadline:
            _reap(record.pid)
            time.sleep(0.05)
        if alive(record):
            _signal_group(record, signal.SIGKILL)
            while alive(record) and time.monotonic() < deadline + 5:
                _reap(record.pid)
                time.sleep(0.05)
    # A leader that exited on SIGTERM may leave members that ignored it (an engine core, a load client's worker):
    # the session ends as a whole, so nothing outlives `dev down`. Only right after the leader ran: a session id
    # long without members could belong to someone else by now.
    if was_alive:
        kill_session(record, signal.SIGKILL)
    (run_dir(state_dir) / f"{name}.json").unlink(missing_ok=True)
    return was_alive


def stop_child(
    proc: subprocess.Popen[Any], grace: float = 30.0, *, group: bool = False, sig: signal.Signals = signal.SIGTERM
) -> int:
    """Stop a child held as a Popen (what tests and benchmarks start themselves; `stop` is for recorded ones):
    `sig`, SIGKILL after `grace` s, reaped; returns its exit status. `group` signals its whole process group,
    for a child started with start_new_session whose own children must go too (a load client's workers);
    one that already exited is left alone (its group id may be someone else's by now)."""
    if proc.poll() is not None:
        return proc.returncode

    def send(s: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            if group:
                os.killpg(proc.pid, s)
            else:
                proc.send_signal(s)

    send(sig)
    try:
        return proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        send(signal.SIGKILL)
        return proc.wait(timeout=10)


def _signal_group(record: ProcRecord, sig: signal.Signals) -> None:
    # start_new_session made the child a group leader: its PGID is its PID. Re-check identity right
    # before signalling so a PID recycled in between is left alone.
    if not alive(record):
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(record.pid, sig)


def _reap(pid: int) -> None:
    """Collect the exit status when the process is our own child (a same-process up/down, as in tests)."""
    if pid in _CHILDREN:
        _CHILDREN[pid].poll()
        return
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
