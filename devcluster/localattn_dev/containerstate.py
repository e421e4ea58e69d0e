"""One container's life as kubelet reports it, and the pod status built from its containers. Pure.

`ContainerLifecycle` is told what happened (configured or not, started, exited, probe results) and answers
what to do next (start now? kill for a failed liveness/startup probe?) and what to report (state waiting /
running / terminated, lastState, ready, started, restartCount). `pod_status` turns the containers into the
strategic-merge patch of the pod's status (phase by kubelet's getPhase rules, conditions whose
lastTransitionTime moves only when they change).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from localattn_dev.probes import CrashBackoff, Probe, ProbeTracker, restart_wanted


def stamp(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def exit_code_of(returncode: int) -> int:
    """A Popen returncode as a container exit code: killed by signal N -> 128 + N."""
    return 128 - returncode if returncode < 0 else returncode


@dataclass(frozen=True)
class Exit:
    exit_code: int
    reason: str  # Completed | Error | OOMKilled | ContainerStatusUnknown
    started_at: float
    finished_at: float
    message: str = ""

    def as_state(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "exitCode": self.exit_code,
            "reason": self.reason,
            "startedAt": stamp(self.started_at),
            "finishedAt": stamp(self.finished_at),
        }
        if self.message:
            state["message"] = self.message
        return {"terminated": state}


def exit_reason(exit_code: int) -> str:
    return "Completed" if exit_code == 0 else "Error"


@dataclass
class ContainerLifecycle:
    name: str
    image: str
    restart_policy: str = "Always"
    probes: Mapping[str, Probe] = field(default_factory=dict)
    restart_count: int = 0
    pod: str = ""  # namespace/name, for kubelet-like messages
    waiting: tuple[str, str] | None = ("ContainerCreating", "")
    running_since: float | None = None
    terminated: Exit | None = None  # the current state, when it will not be restarted
    last: Exit | None = None  # lastState
    next_start_at: float | None = 0.0  # None: never again
    backoff: CrashBackoff = field(default_factory=CrashBackoff)
    trackers: dict[str, ProbeTracker] = field(default_factory=dict)
    container_id: str = ""

    # -- what happened -----------------------------------------------------------------------------------
    def cannot_start(self, reason: str, message: str, now: float, retry_in: float = 2.0) -> None:
        """Not configurable yet (missing ConfigMap, unknown image...): waiting, retried later."""
        self.waiting = (reason, message)
        self.next_start_at = now + retry_in

    def started(self, now: float, container_id: str, seeded: Mapping[str, bool] | None = None) -> None:
        """Running from `now`. `seeded` carries the probe verdicts of an adopted container (agent restart)."""
        self.running_since, self.waiting, self.terminated = now, None, None
        self.next_start_at = None
        self.container_id = container_id
        self.trackers = {kind: ProbeTracker(probe, now) for kind, probe in self.probes.items()}
        for kind, result in (seeded or {}).items():
            if kind in self.trackers:
                self.trackers[kind].result = result

    def exited(self, exit_code: int, reason: str, now: float, message: str = "") -> None:
        """The process is gone: restart per policy (with back-off), or stay terminated."""
        started = self.running_since if self.running_since is not None else now
        record = Exit(exit_code, reason, started, now, message)
        self.running_since, self.trackers = None, {}
        if restart_wanted(self.restart_policy, exit_code):
            wait = self.backoff.wait_before_restart(now)
            self.last, self.terminated = record, None
            self.next_start_at = now + wait
            self.waiting = (
                (
                    "CrashLoopBackOff",
                    f"back-off {wait:.0f}s restarting failed container={self.name} pod={self.pod}",
                )
                if wait > 0
                else None
            )
        else:
            self.terminated, self.waiting, self.next_start_at = record, None, None

    def restarting(self, now: float) -> None:
        """A start that is a restart: count it and advance the back-off (kubelet: restartCount++, Next)."""
        if self.last is not None:
            self.restart_count += 1
            self.backoff.restarted(self.last.finished_at)

    # -- what to do ---------------------------------------------------------------------------------------
    def start_due(self, now: float) -> bool:
        return self.running_since is None and self.next_start_at is not None and now >= self.next_start_at

    def due_probes(self, now: float) -> list[Probe]:
        """The probes to run now: startup until it passed, then readiness and liveness."""
        if self.running_since is None:
            return []
        startup = self.trackers.get("startup")
        if startup is not None and not startup.result:
            return [startup.probe] if startup.due(now) else []
        return [t.probe for kind, t in self.trackers.items() if kind != "startup" and t.due(now)]

    def record_probe(self, kind: str, ok: bool, now: float) -> str | None:
        """Count a probe result; a message when the container must be killed and restarted."""
        tracker = self.trackers.get(kind)
        if tracker is None:
            return None
        tracker.record(ok, now)
        if kind == "startup" and not ok and tracker.failures >= tracker.probe.failure_threshold:
            return f"Container {self.name} failed startup probe, will be restarted"
        if kind == "liveness" and not tracker.result:
            return f"Container {self.name} failed liveness probe, will be restarted"
        return None

    # -- what to report ------------------------------------------------------------------------------------
    @property
    def is_started(self) -> bool:
        if self.running_since is None:
            return False
        startup = self.trackers.get("startup")
        return startup is None or startup.result

    @property
    def is_ready(self) -> bool:
        if not self.is_started:
            return False
        readiness = self.trackers.get("readiness")
        return readiness is None or readiness.result

    def state(self) -> dict[str, Any]:
        if self.running_since is not None:
            return {"running": {"startedAt": stamp(self.running_since)}}
        if self.terminated is not None:
            return self.terminated.as_state()
        reason, message = self.waiting or ("ContainerCreating", "")
        return {"waiting": {"reason": reason, **({"message": message} if message else {})}}

    def status(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "image": self.image,
            "imageID": f"localattn-process://{self.image}",
            "containerID": self.container_id,
            "ready": self.is_ready,
            "started": self.is_started,
            "restartCount": self.restart_count,
            "state": self.state(),
            "lastState": self.last.as_state() if self.last else {},
        }


def phase(containers: Sequence[ContainerLifecycle], restart_policy: str) -> str:
    """kubelet's getPhase for the app containers."""
    waiting = running = stopped = succeeded = 0
    for c in containers:
        if c.running_since is not None:
            running += 1
        elif c.terminated is not None:
            stopped += 1
            succeeded += c.terminated.exit_code == 0
        elif c.last is not None:  # waiting to restart counts as stopped
            stopped += 1
            succeeded += c.last.exit_code == 0
        else:
            waiting += 1
    if waiting:
        return "Pending"
    if running:
        return "Running"
    if restart_policy == "Always":
        return "Running"
    if restart_policy == "OnFailure":
        return "Succeeded" if stopped == succeeded else "Running"
    return "Succeeded" if stopped == succeeded else "Failed"


@dataclass
class ConditionClock:
    """lastTransitionTime per condition: moves only when the condition's status changes."""

    since: dict[str, tuple[str, float]] = field(default_factory=dict)

    def at(self, kind: str, status: str, now: float) -> float:
        previous = self.since.get(kind)
        if previous is None or previous[0] != status:
            self.since[kind] = (status, now)
        return self.since[kind][1]


def pod_status(
    containers: Sequence[ContainerLifecycle],
    restart_policy: str,
    pod_ip: str,
    host_ip: str,
    start_time: str,
    clock: ConditionClock,
    now: float,
) -> dict[str, Any]:
    """The pod-status patch (`{"status": ...}`) for the containers' current state."""
    unready = [c.name for c in containers if not c.is_ready]
    ready = "False" if unready else "True"

    def condition(kind: str, status: str) -> dict[str, Any]:
        cond: dict[str, Any] = {
            "type": kind,
            "status": status,
            "lastProbeTime": None,
            "lastTransitionTime": stamp(clock.at(kind, status, now)),
        }
        if status == "False":
            cond["reason"] = "ContainersNotReady"
            cond["message"] = f"containers with unready status: [{' '.join(unready)}]"
        return cond

    return {
        "status": {
            "phase": phase(containers, restart_policy),
            "hostIP": host_ip,
            "podIP": pod_ip,
            "podIPs": [{"ip": pod_ip}],
            "startTime": start_time,
            "conditions": [
                condition("Initialized", "True"),
                condition("Ready", ready),
                condition("ContainersReady", ready),
                condition("PodScheduled", "True"),
            ],
            "containerStatuses": [c.status() for c in containers],
        }
    }


def rejected_status(reason: str, message: str) -> dict[str, Any]:
    """kubelet's admission rejection (e.g. OutOfnvidia.com/gpu): the pod fails without running."""
    return {"status": {"phase": "Failed", "reason": reason, "message": message}}
