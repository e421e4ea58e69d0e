"""Leader election (leader.py): the pure decision, and two electors over an in-memory Lease store."""

from __future__ import annotations

import copy
import threading
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from localattn_operator import leader
from localattn_operator.leader import (
    Decision,
    Elector,
    LeaseState,
    Seen,
    Timing,
    decide,
    lease_body,
    must_stop,
)

TIMING = Timing(lease_duration=15, renew_deadline=10, retry_period=2)
WALL = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def held(holder: str | None, version: str = "7", duration: float = 15) -> LeaseState:
    return LeaseState(holder=holder, duration_seconds=duration, transitions=2, acquire_time="t0", version=version)


# --- the decision ---------------------------------------------------------------------------------------------

def test_no_lease_is_created_and_our_own_is_renewed() -> None:
    assert decide(None, None, "a", 0.0) == Decision("create", None)
    assert decide(held("a"), Seen("7", 0.0), "a", 100.0) == Decision("renew", None)


def test_a_released_lease_is_taken_at_once() -> None:
    assert decide(held(None), None, "b", 0.0).action == "take"


def test_a_live_holder_is_waited_for_a_whole_lease_duration_from_first_sight() -> None:
    first = decide(held("a"), None, "b", 50.0)
    assert first == Decision("wait", Seen("7", 50.0))  # the lease's own renewTime is never compared to our clock
    assert decide(held("a"), first.seen, "b", 64.9).action == "wait"
    assert decide(held("a"), first.seen, "b", 65.0) == Decision("take", Seen("7", 50.0))


def test_a_renewal_restarts_the_wait() -> None:
    seen = Seen("7", 0.0)
    renewed = decide(held("a", version="8"), seen, "b", 14.0)
    assert renewed == Decision("wait", Seen("8", 14.0))
    assert decide(held("a", version="8"), renewed.seen, "b", 28.0).action == "wait"


def test_the_holders_announced_duration_counts() -> None:
    seen = Seen("7", 0.0)
    assert decide(held("a", duration=40), seen, "b", 39.0).action == "wait"
    assert decide(held("a", duration=40), seen, "b", 40.0).action == "take"


def test_the_leader_stops_at_the_renew_deadline() -> None:
    assert not must_stop(100.0, 109.99, TIMING)
    assert must_stop(100.0, 110.0, TIMING)


@pytest.mark.parametrize(("lease", "renew", "retry"), [(10, 10, 2), (15, 10, 10), (15, 10, 0), (5, 10, 2)])
def test_timing_must_leave_room_between_stop_and_takeover(lease: float, renew: float, retry: float) -> None:
    with pytest.raises(ValueError, match="retryPeriod < renewDeadline < leaseDuration"):
        Timing(lease, renew, retry)


def test_lease_bodies() -> None:
    kw: dict[str, Any] = {"namespace": "ns", "name": "op", "identity": "b", "timing": Timing(6.5, 4, 1), "wall": WALL}
    created = lease_body("create", None, **kw)
    assert created["metadata"] == {"name": "op", "namespace": "ns"}
    assert created["spec"] == {"holderIdentity": "b", "leaseDurationSeconds": 7, "acquireTime": "2026-12-01T12:00:00.000000Z",
                               "renewTime": "2026-12-01T12:00:00.000000Z", "leaseTransitions": 0}
    taken = lease_body("take", held("a"), **kw)
    assert taken["metadata"]["resourceVersion"] == "7"  # optimistic concurrency: a second taker gets a conflict
    assert taken["spec"]["leaseTransitions"] == 3 and taken["spec"]["acquireTime"] == "2026-12-01T12:00:00.000000Z"
    renewed = lease_body("renew", held("b"), **kw)
    assert renewed["spec"]["leaseTransitions"] == 2 and renewed["spec"]["acquireTime"] == "t0"


# --- electors over an in-memory apiserver ------------------------------------------------------------------------

class Store:
    """A Lease endpoint with the apiserver's concurrency rules: create fails if it exists, an update whose
    resourceVersion is stale fails (both answered None, as k8s.Cluster answers a 409)."""

    def __init__(self) -> None:
        self.lease: dict[str, Any] | None = None
        self.version = 0
        self.calls = 0

    def get_lease(self, namespace: str, name: str) -> dict[str, Any] | None:
        self.calls += 1
        return copy.deepcopy(self.lease)

    def _write(self, body: dict[str, Any]) -> dict[str, Any]:
        self.version += 1
        self.lease = {**copy.deepcopy(body), "metadata": {**body["metadata"], "resourceVersion": str(self.version)}}
        return copy.deepcopy(self.lease)

    def create_lease(self, body: dict[str, Any]) -> dict[str, Any] | None:
        return None if self.lease is not None else self._write(body)

    def update_lease(self, body: dict[str, Any]) -> dict[str, Any] | None:
        assert self.lease is not None
        if body["metadata"].get("resourceVersion") != self.lease["metadata"]["resourceVersion"]:
            return None
        return self._write(body)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def electors(store: Store, clock: Clock, timing: Timing = TIMING) -> tuple[Elector, Elector, list[str]]:
    lost: list[str] = []
    a = Elector(store, namespace="ns", name="op", identity="a", timing=timing, clock=clock,
                on_lost=lambda: lost.append("a"))
    b = Elector(store, namespace="ns", name="op", identity="b", timing=timing, clock=clock,
                on_lost=lambda: lost.append("b"))
    return a, b, lost


def test_the_follower_takes_over_a_dead_leader_after_one_lease_duration() -> None:
    store, clock = Store(), Clock()
    a, b, _ = electors(store, clock)
    a.step()
    b.step()
    assert a.leading.is_set() and not b.leading.is_set()
    for _ in range(5):  # a renews every retry period; b keeps waiting
        clock.now += TIMING.retry_period
        a.step()
        b.step()
        assert not b.leading.is_set()
    died = clock.now  # a is SIGKILLed right after its last renewal
    while not b.leading.is_set():
        clock.now += TIMING.retry_period
        b.step()
    assert TIMING.lease_duration <= clock.now - died <= TIMING.lease_duration + TIMING.retry_period
    assert store.lease is not None and store.lease["spec"]["holderIdentity"] == "b"
    assert store.lease["spec"]["leaseTransitions"] == 1


def test_a_released_lease_goes_to_the_follower_on_its_next_poll() -> None:
    store, clock = Store(), Clock()
    a, b, _ = electors(store, clock)
    a.step()
    b.step()
    a.release()
    assert not a.leading.is_set() and store.lease is not None and "holderIdentity" not in store.lease["spec"]
    clock.now += TIMING.retry_period
    b.step()
    assert b.leading.is_set()


def test_a_leader_that_finds_another_holder_stops() -> None:
    store, clock = Store(), Clock()
    a, b, lost = electors(store, clock)
    a.step()
    b.step()
    clock.now += TIMING.lease_duration
    b.step()  # a was cut off from the apiserver for a whole lease duration (its watchdog would have fired too)
    assert b.leading.is_set()
    a.step()
    assert lost == ["a"] and not a.leading.is_set()


def test_simultaneous_creates_elect_one() -> None:
    store, clock = Store(), Clock()
    a, b, _ = electors(store, clock)
    store.get_lease = lambda namespace, name: None  # type: ignore[method-assign]  # both read "none" before either wrote
    a.step()
    b.step()  # its create conflicts
    assert a.leading.is_set() and not b.leading.is_set()
    del store.get_lease
    b.step()
    assert not b.leading.is_set() and b._seen is not None


@settings(max_examples=500, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["a", "b", "a-dies", "a-partitioned", "b-partitioned"]),
                          st.sampled_from([0.0, 0.5, 1.0, 2.0, 3.0, 5.0, 9.0]) | st.floats(0.0, 16.0)),
                min_size=1, max_size=60))
def test_never_two_leaders(schedule: list[tuple[str, float]]) -> None:
    """Whatever the interleaving, delays, partitions and a crash: when one replica starts leading, the other's
    renew deadline has passed (its watchdog stopped it) or it never led."""
    store, clock = Store(), Clock()
    a, b, _ = electors(store, clock)
    dead: set[str] = set()
    partitioned: set[str] = set()
    for what, delay in schedule:
        clock.now += delay
        for elector in (a, b):  # the watchdogs, at this instant
            if elector.leading.is_set() and must_stop(elector._renewed_at, clock.now, TIMING):
                elector._lose("deadline")
        if what == "a-dies":
            dead.add("a")
            a.leading.clear()  # SIGKILL: it reconciles nothing any more
            continue
        if what.endswith("partitioned"):
            partitioned ^= {what[0]}
            continue
        elector = a if what == "a" else b
        if what in dead or what in partitioned:
            continue
        was = elector.leading.is_set()
        elector.stopped.clear()  # a test elector that lost comes back as a new candidate
        elector.step()
        other = b if elector is a else a
        if elector.leading.is_set() and not was:
            assert not other.leading.is_set() or must_stop(other._renewed_at, clock.now, TIMING)
        assert not (a.leading.is_set() and b.leading.is_set())


# --- threads: the watchdog and the follower's health endpoint ---------------------------------------------------

class Hanging(Store):
    """An apiserver that stops answering (a half-open connection) once the lease exists."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def get_lease(self, namespace: str, name: str) -> dict[str, Any] | None:
        if self.lease is not None:
            self.release.wait(10)
        return super().get_lease(namespace, name)


def test_the_watchdog_stops_a_leader_whose_renewal_hangs() -> None:
    store = Hanging()
    lost = threading.Event()
    timing = Timing(lease_duration=0.6, renew_deadline=0.4, retry_period=0.05)
    elector = Elector(store, namespace="ns", name="op", identity="a", timing=timing, on_lost=lost.set)
    started = time.monotonic()
    elector.start()
    try:
        assert elector.leading.wait(2)
        assert lost.wait(2), "the watchdog did not fire"
        assert time.monotonic() - started < timing.lease_duration + 0.2
        assert not elector.leading.is_set()
    finally:
        store.release.set()
        elector.stopped.set()


def test_follower_health_answers_until_closed() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    healthy = [True]
    url = f"http://127.0.0.1:{port}/healthz"
    with leader.follower_health(url, lambda: healthy[0]):
        assert urllib.request.urlopen(url, timeout=5).status == 200
        healthy[0] = False
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(url, timeout=5)
    with socket.socket() as s:  # the port is free again for kopf's own endpoint (which binds as this does)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
