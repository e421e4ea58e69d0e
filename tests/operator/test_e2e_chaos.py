"""Chaos on a real control plane of this module's own (simulated pods): the apiserver restarted, etcd restarted,
the operator SIGKILLed at random points of a burst of changes. Each time the operator (restarted by us only when
we killed it) converges: every LAD Ready on its spec's revision, exactly one set of children, no lost status,
and after the kills the very state a clean run of the same final specs reaches.

The cluster is fresh (a state dir under pytest's tmp, purged after): restarting the shared session cluster's
apiserver would break the other suites.
"""

from __future__ import annotations

import functools
import json
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from localattn_dev import controlplane
from localattn_dev.testing import HF_MODEL, example_lad, kubectl, temp_namespace, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]  # about 3-5 min: a cluster of its own, two restarts, 3 seeds

T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[2]
GROUP, VERSION, PLURAL = "localattn.dev", "v1alpha1", "localattndeployments"
NODES, GPUS = 2, 16
RESYNC = 4
CALL_TIMEOUT = 5  # every test-side API call: an apiserver that is away must not hang the test
SEEDS = (1, 2, 3)
CHANGES = 20
KILLS = 3  # per seed
LADS = 3
OUTAGE_CHANGES = 10
SETTLED = {"Idle": "settled", "Promoted": "settled"}


def lad(name: str, replicas: int = 1) -> dict[str, Any]:
    return example_lad(name, replicas=replicas, model={"uri": HF_MODEL})  # no claim to bind


@dataclass
class Chaos:
    state_dir: Path
    kubeconfig: Path
    operator: Any
    api: Any  # kubernetes.client.ApiClient

    def restart(self, component: str, down_for: float) -> float:
        """Stop `component` hard (SIGKILL), leave it down for `down_for` s, start it again; seconds it was away."""
        stopped = time.monotonic()
        assert controlplane.stop_component(self.state_dir, component, graceful=False)
        time.sleep(down_for)
        retry(lambda: controlplane.up(self.state_dir, NODES, GPUS, use_existing=False), timeout=120,
              what=f"{component} back")
        return time.monotonic() - stopped

    def custom(self) -> Any:
        from kubernetes import client

        return client.CustomObjectsApi(self.api)

    def lads(self, namespace: str) -> list[dict[str, Any]]:
        found = self.custom().list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL,
                                                            _request_timeout=CALL_TIMEOUT)
        return list(found["items"])

    def patch(self, namespace: str, name: str, spec: dict[str, Any]) -> None:
        self.custom().patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name, {"spec": spec},
                                                     _request_timeout=CALL_TIMEOUT)

    def create(self, namespace: str, body: dict[str, Any]) -> None:
        self.custom().create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body,
                                                      _request_timeout=CALL_TIMEOUT)

    def children(self, namespace: str, name: str) -> dict[str, list[dict[str, Any]]]:
        from kubernetes import client

        selector = f"localattn.dev/deployment={name}"
        apps, core = client.AppsV1Api(self.api), client.CoreV1Api(self.api)
        kw: dict[str, Any] = {"label_selector": selector, "_request_timeout": CALL_TIMEOUT}
        return {
            "deployments": self.api.sanitize_for_serialization(apps.list_namespaced_deployment(namespace, **kw).items),
            "services": self.api.sanitize_for_serialization(core.list_namespaced_service(namespace, **kw).items),
            "configmaps": self.api.sanitize_for_serialization(core.list_namespaced_config_map(namespace, **kw).items),
            "pods": [p for p in self.api.sanitize_for_serialization(core.list_namespaced_pod(namespace, **kw).items)
                     if not p["metadata"].get("deletionTimestamp")],
        }


def retry(call: Callable[[], T], timeout: float = 60.0, what: str = "the call",
          attempts: list[float] | None = None) -> T:
    """`call()` until it succeeds (an apiserver restarting answers refused connections, 500s and timeouts);
    the start of each attempt is appended to `attempts`."""
    deadline = time.monotonic() + timeout
    while True:
        if attempts is not None:
            attempts.append(time.monotonic())
        try:
            return call()
        except Exception as exc:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what}: still failing after {timeout:.0f}s") from exc
            time.sleep(0.3)


@pytest.fixture(scope="module")
def chaos(tmp_path_factory: pytest.TempPathFactory, operator_factory: Any) -> Iterator[Chaos]:
    from kubernetes import config

    state_dir = tmp_path_factory.mktemp("chaos") / "cluster"
    try:
        info = controlplane.up(state_dir, NODES, GPUS, use_existing=False)
        kubectl("apply", "-f", str(ROOT / "crds" / "localattndeployment.yaml"), kubeconfig=info.kubeconfig)
        kubectl("wait", "--for", "condition=established", "--timeout=60s", "crd/localattndeployments.localattn.dev",
                kubeconfig=info.kubeconfig)
        log_dir = tmp_path_factory.mktemp("chaos-operator")
        operator = operator_factory(info.kubeconfig, log_dir, env={"LOCALATTN_RESYNC_SECONDS": str(RESYNC),
                                                                   "HOSTNAME": "chaos"})
        operator.start()
        api = config.new_client_from_config(config_file=str(info.kubeconfig))
        try:
            yield Chaos(state_dir, info.kubeconfig, operator, api)
        finally:
            operator.kill()
            api.close()
    finally:
        controlplane.down(state_dir, purge=True)


def revision(spec: dict[str, Any]) -> str:
    from localattn_operator.revision import revision_of
    from localattn_operator.validation import validate_spec

    return revision_of(validate_spec(spec))


def problems(chaos: Chaos, namespace: str) -> list[str]:
    """Why the namespace is not converged yet (empty: every LAD serves its spec, with one set of children)."""
    found: list[str] = []
    for obj in chaos.lads(namespace):
        name, spec, status = obj["metadata"]["name"], obj["spec"], obj.get("status") or {}
        want = revision(spec)
        if (status.get("phase"), status.get("currentRevision"), status.get("observedGeneration")) != (
                "Ready", want, obj["metadata"]["generation"]):
            found.append(f"{name}: {status.get('phase')} {status.get('currentRevision')} (want {want}) "
                         f"observed {status.get('observedGeneration')}/{obj['metadata']['generation']}")
            continue
        if (status.get("replicas"), status.get("readyReplicas")) != (spec["replicas"], spec["replicas"]):
            found.append(f"{name}: {status.get('readyReplicas')}/{status.get('replicas')} of {spec['replicas']}")
        kids = chaos.children(namespace, name)
        deployments = [(d["metadata"]["name"], d["spec"]["replicas"], d["metadata"]["labels"].get("localattn.dev/revision"))
                       for d in kids["deployments"]]
        if deployments != [(f"{name}-stable", spec["replicas"], want)]:
            found.append(f"{name}: deployments {deployments}")
        if [s["metadata"]["name"] for s in kids["services"]] != [name]:
            found.append(f"{name}: services {[s['metadata']['name'] for s in kids['services']]}")
        if f"{name}-runtime-{want}" not in {c["metadata"]["name"] for c in kids["configmaps"]}:
            found.append(f"{name}: no runtime ConfigMap of {want}")
        if len(kids["pods"]) != spec["replicas"]:
            found.append(f"{name}: {len(kids['pods'])} pods")
    return found


def converge(chaos: Chaos, namespace: str, timeout: float = 150.0) -> None:
    last: list[list[str]] = [[]]

    def settled() -> bool:
        last[0] = problems(chaos, namespace)
        return not last[0]

    try:
        wait_for(settled, timeout=timeout, interval=0.5, message=f"{namespace} to converge")
    except TimeoutError:
        pytest.fail(f"{namespace} did not converge: {last[0]}\n--- operator log ---\n{chaos.operator.logs()}")


def state(chaos: Chaos, namespace: str) -> dict[str, Any]:
    """What a run must end in, independent of its history: children's specs and the deterministic status."""
    result: dict[str, Any] = {}
    for obj in chaos.lads(namespace):
        name, status = obj["metadata"]["name"], obj["status"]
        rollout = status.get("rollout") or {}
        kids = chaos.children(namespace, name)
        services = [{k: v for k, v in s["spec"].items() if k not in ("clusterIP", "clusterIPs")}
                    for s in kids["services"]]
        result[name] = {
            "status": {k: status.get(k) for k in ("phase", "currentRevision", "replicas", "readyReplicas", "ready",
                                                  "selector")},
            "conditions": sorted((c["type"], c["status"], c.get("reason")) for c in status.get("conditions", [])),
            # Idle (never rolled out) and Promoted (rolled out, done) are the same steady state with different pasts
            "rollout": {"phase": SETTLED.get(str(rollout.get("phase")), rollout.get("phase")),
                        **{k: rollout.get(k) for k in ("stableRevision", "canaryRevision", "drainingRevision")}},
            "deployments": {d["metadata"]["name"]: d["spec"] for d in kids["deployments"]},
            "services": services,
            "runtime": {c["metadata"]["name"]: c.get("data") for c in kids["configmaps"]
                        if c["metadata"]["name"].endswith(status["currentRevision"])},
        }
    return result


def differences(a: Any, b: Any, path: str = "") -> list[str]:
    """Leaf paths where two states differ (the assertion message: the whole state is pages long)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b), key=str) for d in differences(a.get(k), b.get(k), f"{path}/{k}")]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b, strict=True)) for d in differences(x, y, f"{path}[{i}]")]
    return [] if a == b else [f"{path}: killed run {json.dumps(a, default=str)} != clean run {json.dumps(b, default=str)}"]


def seed_lads(chaos: Chaos, namespace: str, count: int) -> list[str]:
    names = [f"lad-{i}" for i in range(count)]
    for name in names:
        retry(functools.partial(chaos.create, namespace, lad(name)))
    converge(chaos, namespace)
    return names


def burst(chaos: Chaos, namespace: str, names: list[str], changes: int, rng: random.Random,
          during: Callable[[int], None] = lambda i: None, pause: float = 0.2) -> list[float]:
    """`changes` random spec changes (replicas, window, sinks, local attention on/off), each retried until the
    apiserver takes it; `during(i)` runs after the i-th. Returns when each attempt was sent (monotonic)."""
    attempts: list[float] = []
    for i in range(changes):
        name = rng.choice(names)
        field = rng.choice(["replicas", "windowSize", "sinkTokens", "enabled"])
        if field == "replicas":
            change: dict[str, Any] = {"replicas": rng.choice([1, 2])}
        elif field == "windowSize":
            change = {"localAttention": {"windowSize": rng.choice([64, 128, 256, 512])}}
        elif field == "sinkTokens":
            change = {"localAttention": {"sinkTokens": rng.choice([4, 8])}}
        else:
            change = {"localAttention": {"enabled": rng.choice([True, False])}}
        retry(functools.partial(chaos.patch, namespace, name, change), timeout=180, what=f"change {i}",
              attempts=attempts)
        during(i)
        time.sleep(rng.uniform(0, pause))
    return attempts


class Outage:
    """`component` restarted in the background right after the burst's third change: passes in flight lose their
    connections, and the burst's next changes wait (retried) until it is back."""

    def __init__(self, chaos: Chaos, component: str, at: int = 2, down_for: float = 3.0):
        self._chaos, self._component, self._at, self._down_for = chaos, component, at, down_for
        self._thread: threading.Thread | None = None
        self.away: float | None = None
        self.down_at = self.up_at = 0.0

    def after(self, i: int) -> None:
        if i == self._at:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()

    def _run(self) -> None:
        self.down_at = time.monotonic()
        self.away = self._chaos.restart(self._component, self._down_for)
        self.up_at = time.monotonic()

    def join(self) -> float:
        assert self._thread is not None
        self._thread.join(timeout=180)
        assert self.away is not None, f"{self._component} did not come back"
        return self.away


@pytest.fixture(scope="module")
def lads(chaos: Chaos) -> Iterator[tuple[str, list[str]]]:
    """One namespace of LADs that every test of the module changes further (seeding once keeps the module short)."""
    with temp_namespace(chaos.kubeconfig, prefix="chaos-") as namespace:
        yield namespace, seed_lads(chaos, namespace, LADS)


@pytest.mark.parametrize(("component", "seed"), [("kube-apiserver", 7), ("etcd", 8)], ids=["apiserver", "etcd"])
def test_control_plane_restarted_during_a_burst(chaos: Chaos, lads: tuple[str, list[str]], component: str,
                                                seed: int) -> None:
    namespace, names = lads
    starts = chaos.operator.starts
    outage = Outage(chaos, component)
    attempts = burst(chaos, namespace, names, OUTAGE_CHANGES, random.Random(seed), during=outage.after, pause=0.6)
    away = outage.join()
    during = [t for t in attempts if outage.down_at <= t <= outage.up_at]
    assert during, "no change was sent while it was away: the outage missed the burst"
    converged = time.monotonic()
    converge(chaos, namespace)
    assert chaos.operator.proc.poll() is None, f"the operator died with {component}"
    assert chaos.operator.starts == starts, "the operator was restarted"
    print(f"\nchaos: {component} SIGKILLed and away {away:.1f}s mid-burst of {OUTAGE_CHANGES} changes on "
          f"{len(names)} LADs ({len(during)} attempts sent meanwhile); converged {time.monotonic() - converged:.0f}s after it was back")


@pytest.mark.parametrize("seed", SEEDS)
def test_operator_killed_at_random_points_ends_as_a_clean_run(chaos: Chaos, lads: tuple[str, list[str]],
                                                              seed: int) -> None:
    namespace, names = lads
    rng = random.Random(seed)
    kill_at = set(rng.sample(range(CHANGES), KILLS))
    starts = chaos.operator.starts

    def kill(i: int) -> None:
        if i in kill_at:  # somewhere in the pass this change started (or in the coalescing delay before it)
            time.sleep(rng.uniform(0, 0.6))
            chaos.operator.kill()
            chaos.operator.start()  # it misses what changes while it starts: resume must catch up

    t0 = time.monotonic()
    burst(chaos, namespace, names, CHANGES, rng, during=kill)
    assert chaos.operator.starts == starts + KILLS
    with temp_namespace(chaos.kubeconfig, prefix=f"chaos-clean{seed}-") as clean:
        for obj in chaos.lads(namespace):  # the clean run: the same final specs, created once, never a kill
            body = lad(obj["metadata"]["name"])
            body["spec"] = obj["spec"]
            retry(functools.partial(chaos.create, clean, body))
        t1 = time.monotonic()
        converge(chaos, namespace)
        t2 = time.monotonic()
        converge(chaos, clean)
        killed, reference = state(chaos, namespace), state(chaos, clean)
        assert killed == reference, "\n".join(differences(killed, reference))[:6000]
    print(f"\nchaos: seed {seed}: {CHANGES} changes on {len(names)} LADs, operator SIGKILLed after changes "
          f"{sorted(kill_at)}; final state equals the clean run's (burst {t1 - t0:.0f}s, converged {t2 - t1:.0f}s "
          "after it)")


@pytest.fixture(autouse=True)
def _operator_alive(chaos: Chaos) -> Iterator[None]:
    chaos.operator.start()
    yield

