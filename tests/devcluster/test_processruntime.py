"""The process runtime with real processes but no cluster: readiness from probes, OOMKilled, crash loop,
termination, adoption by a second runtime, `stop_all`. Seconds, not minutes (no vLLM)."""

from __future__ import annotations

import random
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from localattn_dev import procs
from localattn_dev.podlayout import pods_dir, record_name
from localattn_dev.processruntime import ProcessRuntime, stop_all
from localattn_dev.testing import wait_for

HOST = "127.1.9.1"


def pod(name: str, container: dict[str, Any], **spec: Any) -> dict[str, Any]:
    uid = f"{name}-{random.randrange(16**8):08x}-0000-0000-000000000000"
    return {
        "metadata": {"name": name, "namespace": "t", "uid": uid},
        "spec": {"nodeName": "localattn-gpu-9", "containers": [{"name": "main", **container}], **spec},
        "status": {},
    }


@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[ProcessRuntime]:
    rt = ProcessRuntime(tmp_path)
    yield rt
    rt.close()
    stop_all(tmp_path, timeout=2)


def status_of(rt: ProcessRuntime, key: str) -> dict[str, Any]:
    patch = rt.status(key)
    return patch["status"] if patch else {}


def container(rt: ProcessRuntime, key: str) -> dict[str, Any]:
    statuses = status_of(rt, key).get("containerStatuses") or [{}]
    return dict(statuses[0])


def until(predicate: Callable[[], Any], timeout: float = 30, message: str = "condition") -> Any:
    return wait_for(predicate, timeout=timeout, interval=0.1, message=message)


def web_server(port: int) -> dict[str, Any]:
    return {
        "image": "python:3.11",
        "command": ["python3", "-m", "http.server", "--bind", "$(POD_IP)", str(port)],
        "env": [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
        "ports": [{"name": "http", "containerPort": port}],
        "readinessProbe": {"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 1},
        "livenessProbe": {"tcpSocket": {"port": "http"}, "periodSeconds": 1, "failureThreshold": 2},
    }


def test_ready_from_probes_then_terminated_without_leftovers(runtime: ProcessRuntime, tmp_path: Path) -> None:
    port = random.randrange(20000, 30000)
    p = pod("web", web_server(port), terminationGracePeriodSeconds=5)
    runtime.sync(p, "127.1.9.2", HOST)
    key = "t/web"
    until(lambda: container(runtime, key).get("ready"), message="ready")
    status = status_of(runtime, key)
    assert status["phase"] == "Running" and status["podIP"] == "127.1.9.2"
    assert {c["type"]: c["status"] for c in status["conditions"]}["Ready"] == "True"
    record = procs.load(pods_dir(tmp_path), record_name(p["metadata"]["uid"], "main"))
    assert record is not None and procs.alive(record)
    assert "127.1.9.2" in record.argv  # $(POD_IP) expanded

    until(lambda: runtime.terminate(key, 5.0), message="terminated")
    assert not procs.session_members(record)
    assert procs.load(pods_dir(tmp_path), record.name) is None


def test_memory_limit_is_enforced(runtime: ProcessRuntime) -> None:
    hog = {
        "image": "python:3.11",
        "command": ["python3", "-c", "import time; x = bytearray(300 * 2**20); time.sleep(60)"],
        "resources": {"limits": {"memory": "100Mi"}},
    }
    runtime.sync(pod("hog", hog, restartPolicy="Never"), "127.1.9.3", HOST)
    state = until(lambda: container(runtime, "t/hog").get("state", {}).get("terminated"), message="OOMKilled")
    assert (state["reason"], state["exitCode"]) == ("OOMKilled", 137)
    assert status_of(runtime, "t/hog")["phase"] == "Failed"


def test_crash_loop_back_off(runtime: ProcessRuntime) -> None:
    runtime.sync(pod("crash", {"image": "busybox", "command": ["sh", "-c", "exit 4"]}), "127.1.9.4", HOST)
    waiting = until(
        lambda: (
            container(runtime, "t/crash").get("state", {}).get("waiting", {}).get("reason")
            == "CrashLoopBackOff"
        ),
        message="CrashLoopBackOff",
    )
    assert waiting
    c = container(runtime, "t/crash")
    assert c["restartCount"] == 1 and c["lastState"]["terminated"]["exitCode"] == 4
    assert "back-off 10s" in c["state"]["waiting"]["message"]


def test_unknown_image_is_reported(runtime: ProcessRuntime) -> None:
    runtime.sync(pod("img", {"image": "nginx:1.25"}), "127.1.9.5", HOST)
    waiting = until(lambda: container(runtime, "t/img").get("state", {}).get("waiting", {}).get("message"))
    assert container(runtime, "t/img")["state"]["waiting"]["reason"] == "ErrImagePull"
    assert "nginx:1.25" in waiting
    assert status_of(runtime, "t/img")["phase"] == "Pending"


def test_a_second_runtime_adopts_and_stop_all_ends_everything(tmp_path: Path) -> None:
    port = random.randrange(30000, 40000)
    p = pod("web", web_server(port))
    first = ProcessRuntime(tmp_path)
    first.sync(p, "127.1.9.6", HOST)
    until(lambda: container(first, "t/web").get("ready"), message="ready")
    first.close()  # the agent exits: the process stays
    record = procs.load(pods_dir(tmp_path), record_name(p["metadata"]["uid"], "main"))
    assert record is not None
    time.sleep(0.5)
    assert procs.alive(record)

    p["status"] = dict(status_of(first, "t/web"))
    second = ProcessRuntime(tmp_path)
    second.sync(p, "127.1.9.6", HOST)
    until(lambda: second.status("t/web"), message="status from the adopting runtime")
    c = container(second, "t/web")
    assert c["ready"] and c["restartCount"] == 0 and c["containerID"].endswith(str(record.pid))
    assert second.core_load("") == first.core_load(""), "the adopted pod's cores still count as load"
    second.prune({p["metadata"]["uid"]})  # the pod still exists: nothing stopped
    time.sleep(0.3)
    assert procs.alive(record)
    second.close()
    members = procs.session_members(record)
    assert members
    assert stop_all(tmp_path, timeout=3) == [record.name]
    assert not procs.session_members(record)


def test_kill_session_reaches_children_after_the_leader_died(tmp_path: Path) -> None:
    code = "import subprocess, time; subprocess.Popen(['sleep', '60']); time.sleep(60)"
    record = procs.start(tmp_path, "tree", [sys.executable, "-c", code])
    until(lambda: len(procs.session_members(record)) == 2, message="child started")
    (child,) = set(procs.session_members(record)) - {record.pid}
    procs.kill_session(record, signal.SIGKILL)
    until(lambda: procs.returncode(record) is not None, message="leader reaped")
    assert procs.returncode(record) == -signal.SIGKILL
    until(lambda: not procs.session_members(record), message="child gone")
    assert procs.session_rss(record) == 0 and child not in procs.session_members(record)


def test_pod_ips_are_claimed_machine_wide(tmp_path: Path) -> None:
    """Two process-mode clusters on one machine never hand out the same pod IP."""
    from localattn_dev.nodes import IpPool
    from localattn_dev.podlayout import claim_ip, release_all_ips, release_ip

    ip = "127.1.250.9"
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    try:
        assert claim_ip(one, ip) and claim_ip(one, ip)  # idempotent for its holder
        assert not claim_ip(two, ip)
        release_ip(two, ip)  # not its claim: kept
        assert not claim_ip(two, ip)
        release_all_ips(one)
        assert claim_ip(two, ip)
        two.rmdir()  # the holder's cluster is gone: a stale claim is taken over
        assert claim_ip(one, ip)
    finally:
        release_ip(one, ip)
    pool = IpPool(["n0", "n1"], claim=lambda candidate: candidate != "127.1.0.2")
    assert pool.assign("n0", "ns/a") == "127.1.0.3"
    assert pool.assign("n0", "ns/b", current="127.1.0.2") == "127.1.0.2"  # a pod keeps the IP it has
