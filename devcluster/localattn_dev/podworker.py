"""One pod in process mode: a thread that starts its containers as local processes, runs their probes,
restarts them with back-off, enforces memory limits and terminates them on deletion.

The decisions are in the pure modules (`podplan`, `containerstate`, `probes`); this class only does the
I/O (files, processes via `procs`, probe connections) and publishes the pod status it observes through
`on_change` whenever it differs from the last one published.
"""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import logging
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from localattn_dev import procs
from localattn_dev.containerstate import (
    ConditionClock,
    ContainerLifecycle,
    exit_code_of,
    exit_reason,
    pod_status,
)
from localattn_dev.nodes import fmt_time, pod_key
from localattn_dev.podenv import ConfigError, PodFacts, Refs
from localattn_dev.podlayout import log_file, pod_root, pods_dir, record_name, short_root
from localattn_dev.podplan import ContainerPlan, ImageError, NodeEnv, memory_limit, plan_pod
from localattn_dev.podvolumes import VolumeError, VolumePlan
from localattn_dev.probes import Probe, ProbeError, container_probes

log = logging.getLogger("localattn.nodeagent.pods")
TICK = 0.25
MEMORY_CHECK_SECONDS = 2.0


class PodContext(Protocol):
    """What a worker needs from its runtime."""

    state_dir: Path
    node_env: NodeEnv
    planning: threading.Lock  # one pod picks its cores at a time, seeing the others' choices

    def refs(self, pod: Mapping[str, Any]) -> tuple[Refs, dict[str, str | None]]: ...
    def core_load(self, excluding: str) -> dict[int, int]: ...
    def closing(self) -> bool: ...


def which(command: str, search: Sequence[str]) -> str | None:
    if "/" in command:
        if Path(command).is_file():
            return command
        command = Path(command).name
    return shutil.which(command, path=":".join(search))


def _parse_time(text: str | None) -> float | None:
    try:
        return datetime.strptime(text or "", "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()
    except ValueError:
        return None


class PodWorker:
    def __init__(
        self,
        ctx: PodContext,
        pod: dict[str, Any],
        pod_ip: str,
        host_ip: str,
        on_change: Callable[[str], None],
    ) -> None:
        self.ctx, self.pod, self.pod_ip, self.host_ip = ctx, pod, pod_ip, host_ip
        meta, spec = pod["metadata"], pod.get("spec") or {}
        self.key, self.uid = pod_key(pod), meta.get("uid", "")
        self.root = pod_root(ctx.state_dir, meta.get("namespace", "default"), meta["name"], self.uid)
        self.alias = short_root(self.uid)  # the root as the pod's processes see it
        self.records_dir = pods_dir(ctx.state_dir)
        self.restart_policy = spec.get("restartPolicy", "Always")
        self.on_change = on_change
        status = pod.get("status") or {}
        self.start_time = status.get("startTime") or fmt_time(datetime.now(UTC))
        previous = {c["name"]: c for c in status.get("containerStatuses") or []}
        self.specs = {c["name"]: c for c in spec.get("containers") or []}
        self.lifecycles: list[ContainerLifecycle] = []
        self.memory: dict[str, int | None] = {}
        for c in spec.get("containers") or []:
            ports = {p["name"]: int(p["containerPort"]) for p in c.get("ports") or [] if p.get("name")}
            lifecycle = ContainerLifecycle(
                c["name"], c.get("image", ""), self.restart_policy, pod=self.key,
                restart_count=int((previous.get(c["name"]) or {}).get("restartCount", 0)),
            )  # fmt: skip
            try:
                lifecycle.probes = container_probes(c, ports)
            except ProbeError as e:
                lifecycle.cannot_start("CreateContainerConfigError", str(e), time.time(), retry_in=3600)
            self.lifecycles.append(lifecycle)
            self.memory[c["name"]] = memory_limit(c)
        self.previous_status = previous
        self.running: dict[str, procs.ProcRecord] = {}
        self.plans: dict[str, ContainerPlan] | None = None
        self.cores: tuple[int, ...] = ()
        self.clock = ConditionClock()
        self.published: dict[str, Any] | None = None
        self.grace: float | None = None  # set: terminate
        self.finished = threading.Event()  # nothing runs any more after termination
        self.oom: set[str] = set()
        self.wake = threading.Event()
        self._next_memory_check = 0.0
        self.thread = threading.Thread(target=self._run, name=f"pod {self.key}", daemon=True)

    # -- control from the runtime ----------------------------------------------------------------------
    def start(self) -> None:
        self.thread.start()

    def terminate(self, grace: float) -> None:
        self.grace = grace if self.grace is None else min(grace, self.grace)
        self.wake.set()

    # -- the loop ---------------------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            self._adopt()
            while not self.ctx.closing():
                if self.grace is not None:
                    self._terminate_all(self.grace)
                    self.finished.set()
                    self._publish()
                    return
                now = time.time()
                for lifecycle in self.lifecycles:
                    self._step(lifecycle, now)
                self._publish()
                self.wake.wait(TICK)
                self.wake.clear()
        except Exception:
            log.exception("pod worker %s failed", self.key)
            raise

    def _adopt(self) -> None:
        """Processes a previous agent started for this pod keep running; their probe verdicts are taken
        from the pod's status so an agent restart neither restarts them nor flips readiness."""
        now = time.time()
        for lifecycle in self.lifecycles:
            record = procs.load(self.records_dir, record_name(self.uid, lifecycle.name))
            if record is None:
                continue
            with contextlib.suppress(OSError, ValueError):
                self.cores = tuple(int(c) for c in (self.root / "cores").read_text().split())
            seen = self.previous_status.get(lifecycle.name) or {}
            started = _parse_time(((seen.get("state") or {}).get("running") or {}).get("startedAt")) or now
            lifecycle.started(started, f"localattn-process://{record.pid}")
            for tracker in lifecycle.trackers.values():
                tracker.next_at = now
                if tracker.probe.kind == "startup" and seen.get("started"):
                    tracker.result = True
                if tracker.probe.kind == "readiness" and seen.get("ready"):
                    tracker.result = True
            self.running[lifecycle.name] = record
            log.info("adopted %s/%s (pid %d)", self.key, lifecycle.name, record.pid)

    def _step(self, lifecycle: ContainerLifecycle, now: float) -> None:
        record = self.running.get(lifecycle.name)
        if record is not None and not procs.alive(record):
            self._reap(lifecycle, record, now)
            record = None
        if record is None and lifecycle.start_due(now):
            self._start(lifecycle, now)
            return
        if record is None:
            return
        for probe in lifecycle.due_probes(now):
            ok = self._probe(probe, lifecycle.name)
            kill = lifecycle.record_probe(probe.kind, ok, time.time())
            if kill:
                log.info("%s: %s", self.key, kill)
                grace = probe.termination_grace
                self._kill(record, grace if grace is not None else self._pod_grace())
                self._reap(lifecycle, record, time.time())
                return
        if now >= self._next_memory_check:
            self._next_memory_check = now + MEMORY_CHECK_SECONDS
            limit = self.memory.get(lifecycle.name)
            if limit is not None and procs.session_rss(record) > limit:
                log.warning(
                    "%s/%s: over its memory limit (%d bytes): OOMKilled", self.key, lifecycle.name, limit
                )
                self.oom.add(lifecycle.name)
                procs.kill_session(record, signal.SIGKILL)

    def _pod_grace(self) -> float:
        return float((self.pod.get("spec") or {}).get("terminationGracePeriodSeconds", 30))

    # -- processes --------------------------------------------------------------------------------------
    def _plan(self) -> dict[str, ContainerPlan]:
        if self.plans is None:
            refs, claims = self.ctx.refs(self.pod)
            facts = PodFacts.of(self.pod, self.pod_ip, self.host_ip)
            self._link_alias()
            with self.ctx.planning:
                volumes, plans = plan_pod(
                    self.pod, facts, refs, claims, self.ctx.node_env, self.alias,
                    self.ctx.state_dir / "hostpath", self.ctx.core_load(self.key), which,
                )  # fmt: skip
                self.cores = tuple(c for p in plans for c in p.threads.cores)
                # Kept for an agent that adopts this pod: its cores still count as load.
                (self.root / "cores").write_text(" ".join(map(str, self.cores)))
            self._materialise(volumes, plans)
            self.plans = {p.name: p for p in plans}
        return self.plans

    def _link_alias(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.alias.parent.mkdir(parents=True, exist_ok=True)
        if self.alias.is_symlink() and self.alias.resolve() != self.root.resolve():
            self.alias.unlink()
        if not self.alias.is_symlink():
            self.alias.symlink_to(self.root, target_is_directory=True)

    def _materialise(self, volumes: Mapping[str, VolumePlan], plans: list[ContainerPlan]) -> None:
        for sub in ("home", "tmp", "fs", "logs"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        for volume in volumes.values():
            volume.directory.mkdir(parents=True, exist_ok=True)
            for item in volume.files:
                path = volume.directory / item.path
                path.parent.mkdir(parents=True, exist_ok=True)
                if path.exists():
                    path.chmod(0o644)
                path.write_bytes(item.content)
                path.chmod(item.mode)
        for plan in plans:
            for link in plan.links:
                link.target.mkdir(parents=True, exist_ok=True)
                link.link.parent.mkdir(parents=True, exist_ok=True)
                if not link.link.is_symlink():
                    link.link.symlink_to(link.target, target_is_directory=True)
            plan.cwd.mkdir(parents=True, exist_ok=True)

    def _start(self, lifecycle: ContainerLifecycle, now: float) -> None:
        try:
            plan = self._plan()[lifecycle.name]
        except ImageError as e:
            lifecycle.cannot_start("ErrImagePull", str(e), now, retry_in=10)
            return
        except VolumeError as e:
            lifecycle.cannot_start("ContainerCreating", str(e), now)
            return
        except ConfigError as e:
            lifecycle.cannot_start("CreateContainerConfigError", str(e), now)
            return
        except Exception as e:  # an API timeout reading a ConfigMap or Secret, a full disk: try again later
            log.warning("pod %s container %s cannot start yet: %s", self.key, lifecycle.name, e)
            lifecycle.cannot_start("ContainerCreating", str(e), now, retry_in=10)
            return
        lifecycle.restarting(now)
        path = log_file(self.root, lifecycle.name, lifecycle.restart_count)
        path.parent.mkdir(parents=True, exist_ok=True)
        name = record_name(self.uid, lifecycle.name)
        try:
            record = procs.start(
                self.records_dir, name, plan.argv, plan.env, log_path=path, cwd=plan.cwd, announce=False
            )
        except OSError as e:
            lifecycle.started(now, "")
            lifecycle.exited(128, "StartError", now, str(e))
            return
        self.running[lifecycle.name] = record
        lifecycle.started(time.time(), f"localattn-process://{record.pid}")
        # The program only: expanded args may hold Secret-sourced env values, which never go to the agent's log.
        log.info("started %s/%s: pid %d, %s", self.key, lifecycle.name, record.pid, plan.argv[0])

    def _reap(self, lifecycle: ContainerLifecycle, record: procs.ProcRecord, now: float) -> None:
        """The leader is gone: end the rest of its session (a container ends as a whole) and report why."""
        procs.kill_session(record, signal.SIGKILL)
        code = procs.returncode(record, wait=10.0)
        procs.forget(self.records_dir, record.name)
        self.running.pop(lifecycle.name, None)
        if lifecycle.name in self.oom:
            self.oom.discard(lifecycle.name)
            lifecycle.exited(137, "OOMKilled", now)
        elif code is None:
            lifecycle.exited(
                137, "ContainerStatusUnknown", now, "exit status not observed (started by a previous agent)"
            )
        else:
            lifecycle.exited(exit_code_of(code), exit_reason(exit_code_of(code)), now)
        log.info("%s/%s exited: %s", self.key, lifecycle.name, lifecycle.last or lifecycle.terminated)

    def _kill(self, record: procs.ProcRecord, grace: float) -> None:
        """SIGTERM the container's session, SIGKILL what is left after `grace` seconds."""
        if not procs.kill_session(record, signal.SIGTERM):
            return
        deadline = time.monotonic() + grace
        while procs.session_members(record) and time.monotonic() < deadline:
            procs.returncode(record)  # reap the leader if it is our child
            time.sleep(0.1)
        procs.kill_session(record, signal.SIGKILL)
        while procs.session_members(record) and time.monotonic() < deadline + 5:
            procs.returncode(record)
            time.sleep(0.05)

    def _terminate_all(self, grace: float) -> None:
        threads = [
            threading.Thread(target=self._kill, args=(record, grace)) for record in self.running.values()
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        now = time.time()
        for lifecycle in self.lifecycles:
            record = self.running.get(lifecycle.name)
            if record is not None:
                self._reap(lifecycle, record, now)
            lifecycle.next_start_at = None
        for sub in ("volumes", "fs", "home", "tmp"):
            shutil.rmtree(self.root / sub, ignore_errors=True)
        if self.alias.is_symlink() and self.alias.resolve() == self.root.resolve():
            self.alias.unlink()
        log.info("terminated %s", self.key)

    # -- probes -----------------------------------------------------------------------------------------
    def _probe(self, probe: Probe, container: str) -> bool:
        host = probe.host or self.pod_ip
        if probe.handler in ("httpGet", "tcpSocket") and not _is_loopback(host):
            return False  # the dev cluster never sends traffic off this machine, whatever a pod spec names
        try:
            if probe.handler == "httpGet":
                cls = (
                    http.client.HTTPSConnection
                    if probe.scheme.upper() == "HTTPS"
                    else http.client.HTTPConnection
                )
                conn = cls(host, probe.port, timeout=probe.timeout)
                try:
                    conn.request("GET", probe.path, headers=dict(probe.headers))
                    return 200 <= conn.getresponse().status < 400
                finally:
                    conn.close()
            if probe.handler == "tcpSocket":
                with socket.create_connection((host, probe.port), timeout=probe.timeout):
                    return True
            plan = (self.plans or {}).get(container)
            done = subprocess.run(
                list(probe.command), env=dict(plan.env) if plan else None, cwd=plan.cwd if plan else None,
                timeout=probe.timeout, capture_output=True, check=False,
            )  # fmt: skip
            return done.returncode == 0
        except (OSError, subprocess.SubprocessError, http.client.HTTPException):
            return False

    # -- status -----------------------------------------------------------------------------------------
    def status(self) -> dict[str, Any] | None:
        return self.published

    def _publish(self) -> None:
        patch = pod_status(
            self.lifecycles,
            self.restart_policy,
            self.pod_ip,
            self.host_ip,
            self.start_time,
            self.clock,
            time.time(),
        )
        if patch != self.published:
            self.published = patch
            with contextlib.suppress(Exception):
                self.on_change(self.key)


def _is_loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
