"""Leader election on a coordination.k8s.io/v1 Lease: several operator replicas, exactly one reconciling.

The decision is pure (`decide`, `must_stop`, `lease_body`), fed the Lease as read and a monotonic `now`; the
I/O is a thread (`Elector`) over the one Kubernetes client (k8s.Cluster, every call with a timeout).

Why it is safe (client-go's scheme, clocks compared by rate only, never by their readings):
- a follower takes a Lease over only after it has seen the *same* record (resourceVersion) for the holder's
  whole `leaseDurationSeconds` on its own clock, or at once when the holder released it;
- the holder stops reconciling (the process exits) once `renewDeadline` has passed since the *start* of its
  last successful renewal. The follower saw that renewal only after it started, so the takeover comes at
  least `leaseDuration - renewDeadline` after the old leader stopped.
A follower never runs kopf's watchers (it waits in the startup handler), so it writes nothing at all.
"""

from __future__ import annotations

import contextlib
import http.server
import logging
import math
import os
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

log = logging.getLogger(__name__)

LEASE_API_VERSION = "coordination.k8s.io/v1"
# The exit status of a leader that could not renew in time (the pod restarts and queues up as a follower).
EXIT_LOST_LEASE = 3
# Log lines the e2e tests (and people) look for.
ACQUIRED = "leader election: leading"
LOST = "leader election: lost the lease"

Action = Literal["create", "renew", "take", "wait"]


@dataclass(frozen=True)
class Timing:
    """Seconds, as client-go's defaults: a dead leader is replaced after at most lease + retry (+ start-up)."""

    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0

    def __post_init__(self) -> None:
        if not 0 < self.retry_period < self.renew_deadline < self.lease_duration:
            raise ValueError("leader election needs 0 < retryPeriod < renewDeadline < leaseDuration "
                             f"(got {self.retry_period}, {self.renew_deadline}, {self.lease_duration})")


@dataclass(frozen=True)
class LeaseState:
    """What the decision needs of a live Lease."""

    holder: str | None
    duration_seconds: float
    transitions: int
    acquire_time: str | None
    version: str  # resourceVersion: any write changes it


@dataclass(frozen=True)
class Seen:
    """A follower's memory: the record it last saw and when (its own monotonic clock) it first saw it."""

    version: str
    at: float


@dataclass(frozen=True)
class Decision:
    action: Action
    seen: Seen | None


def state_of(lease: dict[str, Any]) -> LeaseState:
    spec = lease.get("spec") or {}
    return LeaseState(
        holder=spec.get("holderIdentity") or None,
        duration_seconds=float(spec.get("leaseDurationSeconds") or 0),
        transitions=int(spec.get("leaseTransitions") or 0),
        acquire_time=spec.get("acquireTime"),
        version=str(lease["metadata"].get("resourceVersion", "")),
    )


def decide(lease: LeaseState | None, seen: Seen | None, identity: str, now: float) -> Decision:
    """What to do with the Lease as read at monotonic `now`: create it, renew ours, take it over, or wait."""
    if lease is None:
        return Decision("create", None)
    if lease.holder == identity:
        return Decision("renew", None)
    if lease.holder is None:
        return Decision("take", None)  # released by a leader that shut down cleanly
    if seen is None or seen.version != lease.version:
        return Decision("wait", Seen(lease.version, now))  # the holder is alive (or we just started): wait
    if now - seen.at >= lease.duration_seconds:
        return Decision("take", seen)  # unchanged for a whole lease duration: its holder is gone
    return Decision("wait", seen)


def must_stop(renewed_at: float, now: float, timing: Timing) -> bool:
    """A leader whose last successful renewal started `renew_deadline` ago stops before anyone may take over."""
    return now - renewed_at >= timing.renew_deadline


def micro_time(wall: datetime) -> str:
    """A MicroTime as the apiserver writes it."""
    return wall.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def lease_body(action: Action, lease: LeaseState | None, *, namespace: str, name: str, identity: str,
               timing: Timing, wall: datetime) -> dict[str, Any]:
    """The Lease to write for `action` (create/renew/take), carrying the read resourceVersion (optimistic
    concurrency: of two replicas taking over at once, one gets a 409)."""
    now = micro_time(wall)
    metadata: dict[str, Any] = {"name": name, "namespace": namespace}
    if lease is not None:
        metadata["resourceVersion"] = lease.version
    renewing = action == "renew" and lease is not None
    return {
        "apiVersion": LEASE_API_VERSION, "kind": "Lease", "metadata": metadata,
        "spec": {
            "holderIdentity": identity,
            "leaseDurationSeconds": math.ceil(timing.lease_duration),
            "acquireTime": lease.acquire_time if renewing and lease is not None and lease.acquire_time else now,
            "renewTime": now,
            "leaseTransitions": (lease.transitions + (0 if renewing else 1)) if lease is not None else 0,
        },
    }


def released_body(lease: LeaseState, *, namespace: str, name: str, wall: datetime) -> dict[str, Any]:
    """Our Lease handed back on a clean shutdown: no holder, so a follower takes over on its next poll."""
    return {
        "apiVersion": LEASE_API_VERSION, "kind": "Lease",
        "metadata": {"name": name, "namespace": namespace, "resourceVersion": lease.version},
        "spec": {"leaseDurationSeconds": 1, "renewTime": micro_time(wall), "leaseTransitions": lease.transitions},
    }


class LeaseClient(Protocol):
    """The Lease verbs of k8s.Cluster (create/update answer None when another replica wrote first)."""

    def get_lease(self, namespace: str, name: str) -> dict[str, Any] | None: ...
    def create_lease(self, body: dict[str, Any]) -> dict[str, Any] | None: ...
    def update_lease(self, body: dict[str, Any]) -> dict[str, Any] | None: ...


def _exit_lost() -> None:
    """Stop reconciling at once: a thread cannot stop kopf's, so the whole process goes (the pod restarts)."""
    sys.stderr.flush()
    os._exit(EXIT_LOST_LEASE)


class Elector:
    """Acquire and renew the Lease in a thread of its own (a busy event loop never delays a renewal); a watchdog
    thread calls `on_lost` when the renew deadline passes, even while a renewal call is still hanging."""

    def __init__(self, leases: LeaseClient, *, namespace: str, name: str, identity: str, timing: Timing,
                 clock: Callable[[], float] = time.monotonic, on_lost: Callable[[], None] = _exit_lost):
        self._leases = leases
        self.namespace, self.name, self.identity, self.timing = namespace, name, identity, timing
        self._clock, self._on_lost = clock, on_lost
        self.leading = threading.Event()
        self.stopped = threading.Event()
        self._renewed_at = 0.0
        self._seen: Seen | None = None
        self._last: LeaseState | None = None
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for target, suffix in ((self._run, "elector"), (self._watchdog, "watchdog")):
            thread = threading.Thread(target=target, name=f"leader-{suffix}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def alive(self) -> bool:
        return bool(self._threads) and all(t.is_alive() for t in self._threads)

    def step(self) -> None:
        """One read-decide-write round (the thread's loop body; tests call it directly)."""
        started = self._clock()
        found = self._leases.get_lease(self.namespace, self.name)
        lease = state_of(found) if found is not None else None
        decision = decide(lease, self._seen, self.identity, started)
        self._seen = decision.seen
        if decision.action == "wait":
            if self.leading.is_set():  # someone else holds it now: we were too slow; never share
                self._lose(f"held by {lease.holder if lease else None}")
            return
        body = lease_body(decision.action, lease, namespace=self.namespace, name=self.name,
                          identity=self.identity, timing=self.timing, wall=datetime.now(UTC))
        written = (self._leases.create_lease(body) if decision.action == "create"
                   else self._leases.update_lease(body))
        if written is None:  # another replica wrote first: read again next round
            self._seen = None
            return
        with self._lock:
            self._renewed_at = started
            self._last = state_of(written)
        if not self.leading.is_set() and not self.stopped.is_set():
            log.info("%s: %s holds lease %s/%s (%s)", ACQUIRED, self.identity, self.namespace, self.name,
                     decision.action)
            self.leading.set()

    def _run(self) -> None:
        while not self.stopped.is_set():
            try:
                self.step()
            except Exception as exc:  # the apiserver away, a timeout: the watchdog bounds how long we keep leading
                log.warning("leader election: lease %s/%s not renewed: %s", self.namespace, self.name, exc)
            self.stopped.wait(self.timing.retry_period)

    def _watchdog(self) -> None:
        while not self.stopped.is_set():
            with self._lock:
                renewed_at = self._renewed_at
            if self.leading.is_set() and must_stop(renewed_at, self._clock(), self.timing):
                self._lose(f"not renewed for {self.timing.renew_deadline:g}s")
            self.stopped.wait(min(0.25, self.timing.retry_period / 4))

    def _lose(self, why: str) -> None:
        with self._lock:
            if self.stopped.is_set():
                return
            self.stopped.set()
        log.critical("%s %s/%s (%s): stopping so that another replica can lead", LOST, self.namespace, self.name,
                     why)
        self.leading.clear()
        self._on_lost()

    def release(self) -> None:
        """Hand the Lease back (clean shutdown, after reconciling stopped): a follower takes over at once."""
        self.stopped.set()
        with self._lock:
            lease, leading = self._last, self.leading.is_set()
        self.leading.clear()
        if not leading or lease is None:
            return
        try:
            self._leases.update_lease(released_body(lease, namespace=self.namespace, name=self.name,
                                                    wall=datetime.now(UTC)))
            log.info("leader election: released lease %s/%s", self.namespace, self.name)
        except Exception as exc:  # it expires on its own
            log.warning("leader election: could not release lease %s/%s: %s", self.namespace, self.name, exc)


@contextlib.contextmanager
def follower_health(endpoint: str | None, healthy: Callable[[], bool]) -> Iterator[None]:
    """Answer the liveness endpoint while following (kopf serves it only once its startup is done, which a
    follower's is not): 200 while the elector runs. Closed before kopf binds the same port."""
    if not endpoint:
        yield
        return
    url = urllib.parse.urlsplit(endpoint)
    path = url.path or "/"

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            ok = self.path.split("?")[0] == path and healthy()
            body = b'{"leader": false}' if ok else b"{}"
            self.send_response(200 if ok else 500)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: Any) -> None:  # probes every few seconds: not worth a log line each
            pass

    server = http.server.ThreadingHTTPServer((url.hostname or "0.0.0.0", url.port or 80), Handler)
    thread = threading.Thread(target=server.serve_forever, name="follower-health", daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def default_identity() -> str:
    """The pod's name (HOSTNAME) plus a random suffix: a restarted container is a new candidate."""
    import socket
    import uuid

    return f"{os.environ.get('HOSTNAME') or socket.gethostname()}_{uuid.uuid4().hex[:8]}"


__all__ = ["Decision", "Elector", "LeaseState", "Seen", "Timing", "decide", "lease_body", "must_stop"]
