"""kubelet's probe and restart rules, as pure state: probe specs, consecutive-result thresholds, back-off.

`ProbeTracker` turns probe results into a verdict the way kubelet's prober workers do (the first probe
after `initialDelaySeconds`, then every `periodSeconds`; `successThreshold` consecutive successes flip a
failing result, `failureThreshold` consecutive failures flip a passing one). `CrashBackoff` is kubelet's
container restart back-off (flowcontrol.Backoff: the first restart is immediate, then 10 s doubling to a
5 min cap; the chain resets when the last restart is more than 10 min old). Times are seconds (epoch).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

BACKOFF_INITIAL = 10.0
BACKOFF_MAX = 300.0
KINDS = ("startup", "readiness", "liveness")
# A result before any probe ran: not started, not ready, alive (kubelet's initial values).
INITIAL_RESULT = {"startup": False, "readiness": False, "liveness": True}


@dataclass(frozen=True)
class Probe:
    kind: str  # startup | readiness | liveness
    handler: str  # httpGet | tcpSocket | exec
    port: int = 0
    path: str = "/"
    scheme: str = "HTTP"
    host: str = ""  # empty: the pod IP
    headers: tuple[tuple[str, str], ...] = ()
    command: tuple[str, ...] = ()
    initial_delay: float = 0.0
    period: float = 10.0
    timeout: float = 1.0
    success_threshold: int = 1
    failure_threshold: int = 3
    termination_grace: float | None = None


class ProbeError(ValueError):
    pass


def _port(value: Any, ports: Mapping[str, int]) -> int:
    if isinstance(value, int):
        return value
    if str(value).isdigit():
        return int(value)
    if value in ports:
        return ports[value]
    raise ProbeError(f"probe port {value!r} is not a port of the container")


def parse_probe(kind: str, raw: Mapping[str, Any] | None, ports: Mapping[str, int]) -> Probe | None:
    if not raw:
        return None
    timing: dict[str, Any] = {
        "initial_delay": float(raw.get("initialDelaySeconds", 0)),
        "period": float(raw.get("periodSeconds", 10)),
        "timeout": float(raw.get("timeoutSeconds", 1)),
        "success_threshold": int(raw.get("successThreshold", 1)),
        "failure_threshold": int(raw.get("failureThreshold", 3)),
        "termination_grace": (
            float(raw["terminationGracePeriodSeconds"])
            if raw.get("terminationGracePeriodSeconds") is not None
            else None
        ),
    }
    if "httpGet" in raw:
        http = raw["httpGet"]
        headers = tuple((h["name"], h["value"]) for h in http.get("httpHeaders") or [])
        return Probe(
            kind, "httpGet", port=_port(http.get("port"), ports), path=http.get("path") or "/",
            scheme=http.get("scheme", "HTTP"), host=http.get("host", ""), headers=headers, **timing,
        )  # fmt: skip
    if "tcpSocket" in raw:
        tcp = raw["tcpSocket"]
        return Probe(
            kind, "tcpSocket", port=_port(tcp.get("port"), ports), host=tcp.get("host", ""), **timing
        )
    if "exec" in raw:
        return Probe(kind, "exec", command=tuple(raw["exec"].get("command") or []), **timing)
    raise ProbeError(f"{kind} probe: no httpGet, tcpSocket or exec handler")


def container_probes(container: Mapping[str, Any], ports: Mapping[str, int]) -> dict[str, Probe]:
    probes = {kind: parse_probe(kind, container.get(f"{kind}Probe"), ports) for kind in KINDS}
    return {kind: probe for kind, probe in probes.items() if probe is not None}


@dataclass
class ProbeTracker:
    """One probe of one container instance (a restart starts a new tracker)."""

    probe: Probe
    started_at: float
    result: bool = field(default=False)
    successes: int = 0
    failures: int = 0
    next_at: float = 0.0

    def __post_init__(self) -> None:
        self.result = INITIAL_RESULT[self.probe.kind]
        self.next_at = self.started_at + self.probe.initial_delay

    def due(self, now: float) -> bool:
        return now >= self.next_at

    def record(self, ok: bool, now: float) -> bool:
        """Count one result; return True when the verdict flipped."""
        before = self.result
        if ok:
            self.successes, self.failures = self.successes + 1, 0
            if self.successes >= self.probe.success_threshold:
                self.result = True
        else:
            self.successes, self.failures = 0, self.failures + 1
            if self.failures >= self.probe.failure_threshold:
                self.result = False
        self.next_at = now + self.probe.period
        return self.result != before


@dataclass
class CrashBackoff:
    """kubelet's per-container restart back-off."""

    delay: float = 0.0  # the wait before the next restart; 0 until the first restart
    last_update: float | None = None

    def wait_before_restart(self, exited_at: float) -> float:
        """How long after an exit at `exited_at` the container may start again."""
        if self.last_update is None or exited_at - self.last_update > 2 * BACKOFF_MAX:
            return 0.0
        return self.delay

    def restarted(self, exited_at: float) -> None:
        """Record a restart after the exit at `exited_at` (kubelet calls Next with the exit time)."""
        if self.last_update is None or exited_at - self.last_update > 2 * BACKOFF_MAX:
            self.delay = BACKOFF_INITIAL
        else:
            self.delay = min(self.delay * 2, BACKOFF_MAX)
        self.last_update = exited_at


def restart_wanted(policy: str, exit_code: int) -> bool:
    """restartPolicy: Always restarts every exit, OnFailure non-zero exits, Never none."""
    return policy == "Always" or (policy == "OnFailure" and exit_code != 0)
