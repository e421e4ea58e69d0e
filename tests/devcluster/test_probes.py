"""Process mode's kubelet rules without processes: probe thresholds, container lifecycle, back-off, phase."""

from __future__ import annotations

import pytest

from localattn_dev.containerstate import ConditionClock, ContainerLifecycle, exit_code_of, phase, pod_status
from localattn_dev.nodes import admit
from localattn_dev.probes import CrashBackoff, ProbeError, ProbeTracker, container_probes, parse_probe

PORTS = {"http": 8000}


def probe(kind: str, **timing: int) -> dict[str, object]:
    return {"httpGet": {"path": "/health", "port": "http"}, **timing}


def test_parse_probe_defaults_and_named_ports() -> None:
    p = parse_probe("readiness", probe("readiness"), PORTS)
    assert p is not None
    assert (p.handler, p.port, p.path, p.period, p.timeout, p.failure_threshold, p.success_threshold) == (
        "httpGet", 8000, "/health", 10.0, 1.0, 3, 1,
    )  # fmt: skip
    tcp = parse_probe("liveness", {"tcpSocket": {"port": 9000}, "initialDelaySeconds": 5}, PORTS)
    assert tcp is not None and (tcp.handler, tcp.port, tcp.initial_delay) == ("tcpSocket", 9000, 5.0)
    with pytest.raises(ProbeError, match="not a port"):
        parse_probe("liveness", {"httpGet": {"port": "metrics"}}, PORTS)


def test_tracker_thresholds_and_schedule() -> None:
    p = parse_probe(
        "readiness",
        probe("r", periodSeconds=5, successThreshold=2, failureThreshold=3, initialDelaySeconds=10),
        PORTS,
    )
    assert p is not None
    t = ProbeTracker(p, started_at=100.0)
    assert not t.result and not t.due(109.9) and t.due(110.0)
    t.record(True, 110.0)
    assert not t.result and t.next_at == 115.0  # needs two successes in a row
    assert t.record(True, 115.0) and t.result
    t.record(False, 120.0)
    t.record(False, 125.0)
    assert t.result  # two failures are not three
    t.record(True, 130.0)
    t.record(False, 135.0)
    t.record(False, 140.0)
    assert t.result  # the success reset the failure count
    assert t.record(False, 145.0) and not t.result
    live = ProbeTracker(parse_probe("liveness", probe("l"), PORTS), 0.0)  # type: ignore[arg-type]
    assert live.result  # alive until proven otherwise


def test_crash_backoff_is_kubelets() -> None:
    backoff = CrashBackoff()
    exits = [0.0]
    waits = []
    t = 0.0
    for _ in range(9):
        wait = backoff.wait_before_restart(t)
        waits.append(wait)
        backoff.restarted(t)
        t += wait + 1.0  # the restarted container dies after 1 s
        exits.append(t)
    assert waits == [0, 10, 20, 40, 80, 160, 300, 300, 300]
    assert backoff.wait_before_restart(t + 601) == 0  # quiet for 10 min: the chain starts over


def lifecycle(**probes: dict[str, object]) -> ContainerLifecycle:
    c = ContainerLifecycle("vllm", "img", pod="ns/p", probes=container_probes(probes, PORTS))
    return c


def test_startup_then_readiness_then_liveness() -> None:
    c = lifecycle(
        startupProbe=probe("s", periodSeconds=10, failureThreshold=3),
        readinessProbe=probe("r", periodSeconds=5),
        livenessProbe=probe("l", periodSeconds=15, failureThreshold=2),
    )
    assert c.start_due(0.0)
    c.started(0.0, "id")
    assert [p.kind for p in c.due_probes(0.0)] == ["startup"]  # only startup until it passed
    assert c.record_probe("startup", False, 0.0) is None
    assert not c.is_started and not c.is_ready
    c.record_probe("startup", True, 10.0)
    assert c.is_started and not c.is_ready
    assert sorted(p.kind for p in c.due_probes(10.0)) == ["liveness", "readiness"]
    c.record_probe("readiness", True, 10.0)
    assert c.is_ready
    assert c.record_probe("liveness", False, 10.0) is None
    assert (
        c.record_probe("liveness", False, 25.0) == "Container vllm failed liveness probe, will be restarted"
    )


def test_startup_probe_failure_restarts() -> None:
    c = lifecycle(startupProbe=probe("s", failureThreshold=2))
    c.started(0.0, "id")
    assert c.record_probe("startup", False, 0.0) is None
    assert c.record_probe("startup", False, 10.0) is not None


def test_exits_restart_with_backoff_and_report_crash_loop() -> None:
    c = lifecycle()
    c.started(0.0, "id")
    c.exited(exit_code_of(-9), "Error", 5.0)
    assert c.start_due(5.0)  # the first restart is immediate
    c.restarting(5.0)
    c.started(5.0, "id2")
    assert c.restart_count == 1
    c.exited(1, "Error", 6.0)
    assert not c.start_due(15.9) and c.start_due(16.0)
    status = c.status()
    assert status["state"]["waiting"]["reason"] == "CrashLoopBackOff"
    assert "back-off 10s" in status["state"]["waiting"]["message"]
    assert status["lastState"]["terminated"]["exitCode"] == 1
    assert (status["ready"], status["started"], status["restartCount"]) == (False, False, 1)
    assert phase([c], "Always") == "Running"


def test_restart_policies_and_phase() -> None:
    done = ContainerLifecycle("c", "img", restart_policy="OnFailure")
    done.started(0.0, "id")
    done.exited(0, "Completed", 1.0)
    assert not done.start_due(100.0) and phase([done], "OnFailure") == "Succeeded"
    failed = ContainerLifecycle("c", "img", restart_policy="Never")
    failed.started(0.0, "id")
    failed.exited(137, "OOMKilled", 1.0)
    assert phase([failed], "Never") == "Failed"
    assert failed.status()["state"]["terminated"]["reason"] == "OOMKilled"
    assert phase([ContainerLifecycle("c", "img")], "Always") == "Pending"
    assert exit_code_of(-15) == 143 and exit_code_of(3) == 3


def test_pod_status_conditions_move_only_on_change() -> None:
    c = lifecycle(readinessProbe=probe("r"))
    clock = ConditionClock()
    c.started(0.0, "id")
    first = pod_status([c], "Always", "127.1.0.2", "127.1.0.1", "2026-01-01T00:00:00Z", clock, 1.0)["status"]
    again = pod_status([c], "Always", "127.1.0.2", "127.1.0.1", "2026-01-01T00:00:00Z", clock, 50.0)["status"]
    assert first == again  # nothing changed: the same patch (the agent sends nothing)
    ready = {x["type"]: x for x in first["conditions"]}["Ready"]
    assert (ready["status"], ready["reason"]) == ("False", "ContainersNotReady")
    c.record_probe("readiness", True, 60.0)
    after = pod_status([c], "Always", "127.1.0.2", "127.1.0.1", "2026-01-01T00:00:00Z", clock, 60.0)["status"]
    ready = {x["type"]: x for x in after["conditions"]}["Ready"]
    assert ready["status"] == "True" and ready["lastTransitionTime"] == "1970-01-01T00:01:00Z"
    assert after["phase"] == "Running" and after["podIP"] == "127.1.0.2"


def test_gpu_admission() -> None:
    assert admit("p", 1, 3, 4) is None
    assert admit("p", 0, 9, 4) is None
    message = admit("p", 2, 3, 4)
    assert message is not None and "requested: 2, used: 3, capacity: 4" in message
