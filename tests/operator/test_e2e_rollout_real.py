"""Progressive delivery end to end on real vLLM CPU pods, the real control plane and the real Prometheus.

One process-mode dev cluster per module (2 nodes x 2 fake GPUs, HAProxy, Prometheus scraping every 2 s), the
operator as a process, one LocalAttnDeployment `tiny-llama` of 2 replicas of the tiny trained model (the demo's
`examples/deployment*.yaml`, its quality probe on a golden set built from the model), and one steady stream
from the real load client (`localattn load`, 2 requests/s through the Service's proxy address) for the whole
module. vLLM start-up is the cost (tens of seconds per pod on 2 cores), so the tests are a CHAIN, in file order,
on the one LAD: each test's end state is the next one's start, and the issue's checks 4 and 5 are folded into
rollouts the others need anyway (a test run alone with `-k` therefore fails its preconditions):

1. full-attention baseline -> the local-attention revision (W=64, S=4, layer 0 global), steps 25 % and 50 %,
   `maxSurge: 0`, promoted automatically after both analyses. Along the way: pause (annotation) / resume
   (kubectl plugin) / pause (plugin) / resume (annotation); the operator SIGKILLed once while a step is
   analysed and once mid-promotion (check 4: it resumes from `status.rollout`). Sampled throughout: ready
   serving pods never below `replicas - 1` and the GPUs the arms ask for never above `replicas` (what the
   design promises for `maxSurge: 0`, docs/rollout.md "Promotion"; see the test's docstring). The paired
   comparison is on (reported, no floor): the golden set's prompts, greedy, to one pod per arm each window.
2. -> the bad revision (W=16, no sinks, no global layer), `maxSurge: 1`, steps 25 %, pause, 33 % (the same
   split: no extra pod). Step 1 with the quality gate off: the latency-only analysis passes, with the quality
   regression visible in its figures. Then the quality gate on, `kubectl localattn resume`, and step 3's
   analysis fails on quality alone (latency passed in the same window): rolled back, numbers in status and in
   the Warning event. The paired comparison is on with a `minAgreement` floor: the bad canary agrees less with
   its stable, and diverges more in logprobs, than the good one did in test 1, and the agreement gate judged
   its number. Ready pods never below `replicas`; stable's pods never restarted.
3. -> the good revision plus `LOCALATTN_TEST_DELAY_MS` (the runtime's test-only fault: every model step waits),
   one step. Prometheus is stopped once the canary is ready (check 4): every window is Inconclusive (its gates
   Error, the provider's message in the `AnalysisInconclusive` event) and the rollout holds; the first for
   free, the second and third, beyond `consecutiveErrorLimit: 1`, charged to `inconclusiveLimit` as missing data
   (`missingData: inconclusive`). Prometheus started again, the next window fails the latency gate alone:
   rolled back.
4. -> a third revision (S=8): promote-now through the plugin (acknowledged, Promoting, stable kept while the
   canary is not ready), then abort through the annotation mid-promotion (Aborted, canary gone, stable
   untouched), then the spec reverted to the stable revision (Idle).

Knobs that make it fit a 2-core CI machine (~10 min): replicas 2, `--enforce-eager`, analysis windows of 10-15 s
after a 10 s `initialDelay`, `minRequests: 4`, generous latency limits (the stable and canary pods share the
cores with the load client and each other; the delay fault is far beyond them). Timings are printed (`-s`).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from localattn_dev import modelstore, procs, prometheus
from localattn_dev.controlplane import ClusterInfo
from localattn_dev.demo import answers
from localattn_dev.demo_io import Kube, LoadPlan, Loads, revision_figures
from localattn_dev.devurls import url_of
from localattn_dev.fleetsampler import FleetSampler
from localattn_dev.ports import free_port
from localattn_dev.serviceproxy import write_atomic
from localattn_dev.testing import process_cluster, wait_for

# The first test also pays for the module's cluster and baseline; on a shared, busy machine a vLLM pod can take
# minutes to start, so pytest's default per-test timeout is raised (the waits below bound each step themselves).
pytestmark = [pytest.mark.e2e, pytest.mark.vllm, pytest.mark.slow, pytest.mark.timeout(2400)]

ROOT = Path(__file__).resolve().parents[2]
LAD = "tiny-llama"
GOLDEN = "tiny-llama-golden"
REPLICAS = 2
DELAY_MS = 80
KEEP = "LOCALATTN_E2E_KEEP"  # set: the module's cluster is left running after the tests (for a look)
POD_START_TIMEOUT = 420.0  # a vLLM pod on a busy 2-core machine; several may start one after another
PAIRED_PROMPTS = 8  # the golden set's exact-match prompts (`localattn model golden` builds 8)
AGREEMENT_FLOOR = 0.6  # test 2's minAgreement


def _example(name: str) -> dict[str, Any]:
    return dict(yaml.safe_load((ROOT / "examples" / name).read_text()))


BASELINE = _example("deployment.yaml")
GOOD = _example("deployment-local.yaml")["spec"]["localAttention"]  # W=64, S=4, layer 0 global
BAD = _example("deployment-bad.yaml")["spec"]["localAttention"]  # W=16, no sinks, no global layer
FULL = BASELINE["spec"]["localAttention"]


def _load(path: Path, name: str) -> ModuleType:
    """A sibling test helper module by path (tests are not a package: `--import-mode=importlib`)."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# The operator process (start / SIGTERM / SIGKILL) and `kubectl localattn` as kubectl runs it: one way each.
OperatorProcess = _load(Path(__file__).with_name("conftest.py"), "_operator_conftest").OperatorProcess
_plugin = _load(ROOT / "tests" / "cli" / "test_e2e_kubectl_plugin.py", "_plugin_e2e").plugin


def analysis(prom: str, *, quality: bool = True, e2e: int = 500, failure_limit: int = 2,
             interval: str = "10s", min_agreement: float | None = None) -> dict[str, Any]:
    """The analysis of every rollout here. Latency limits are wide (500 % by default): two pods and the load
    client share 2 cores, and a 10 s window's p95 has been seen 6x the other arm's for no reason but that;
    the delay fault (test 3) is far beyond any of it. Missing data holds for up to 8 windows (a new pod's
    first requests can take that long on a busy machine)."""
    thresholds: dict[str, Any] = {"maxLatencyRegressionPercent": {"e2e": e2e}, "maxErrorRate": 0.05}
    if quality:
        thresholds |= {"maxPerplexityRatio": 1.05, "maxExactMatchDrop": 0.25}
    if min_agreement is not None:
        thresholds["minAgreement"] = min_agreement
    return {"interval": interval, "initialDelay": "10s", "minRequests": 4, "failureLimit": failure_limit,
            "inconclusiveLimit": 8, "consecutiveErrorLimit": 1, "missingData": "inconclusive",
            "lengthBuckets": [256], "thresholds": thresholds, "provider": {"prometheus": {"url": prom}}}


def manifest(local: dict[str, Any], rollout: dict[str, Any], analysis_: dict[str, Any],
             env: list[dict[str, str]] | None = None, paired: bool = False) -> dict[str, Any]:
    """The baseline with this local-attention setting, rollout and analysis. `paired`: the operator also sends
    the golden set's exact-match prompts (about 70-100 tokens, beyond the bad setting's window of 16), greedy,
    to one pod per arm each window and compares the tokens (spec.pairedComparison)."""
    doc = json.loads(json.dumps(BASELINE))
    spec = doc["spec"]
    spec["replicas"] = REPLICAS
    spec["localAttention"] = json.loads(json.dumps(local))
    spec["runtime"]["env"] = [*spec["runtime"].get("env", []), *(env or [])]
    spec["rollout"] = {"progressDeadlineSeconds": 300, **rollout}
    spec["analysis"] = analysis_
    if paired:
        spec["pairedComparison"] = {"enabled": True, "maxPrompts": PAIRED_PROMPTS, "maxTokens": 16}
    return doc


# --- observing ----------------------------------------------------------------------------------------------


@dataclass
class Rig:
    info: ClusterInfo
    kube: Kube
    operator: Any  # OperatorProcess
    loads: Loads
    prometheus: str
    work: Path
    t0: float = field(default_factory=time.monotonic)
    timings: list[tuple[str, float]] = field(default_factory=list)
    revisions: dict[str, str] = field(default_factory=dict)  # what each test rolled out, by name
    paired: dict[str, dict[str, Any]] = field(default_factory=dict)  # a canary's last paired figures, by name
    load_started: float = 0.0

    @property
    def kubeconfig(self) -> Path:  # for the plugin helper
        return self.info.kubeconfig

    def mark(self, what: str) -> None:
        at = time.monotonic() - self.t0
        self.timings.append((what, at))
        print(f"[{at:6.0f}s] {what}", flush=True)

    def lad(self) -> dict[str, Any]:
        found = self.kube.lad(LAD)
        assert found is not None, "the LAD is gone"
        return found

    def rollout(self) -> dict[str, Any]:
        return dict((self.lad().get("status") or {}).get("rollout") or {})

    def wait(self, predicate: Callable[[dict[str, Any]], Any], what: str, timeout: float = 120.0) -> dict[str, Any]:
        """Poll the LAD until `predicate(rollout status)` holds; on timeout the last status and operator log."""
        def check() -> dict[str, Any] | None:
            ro = self.rollout()
            return ro if predicate(ro) else None

        try:
            found = wait_for(check, timeout=timeout, interval=1.0, message=what)
        except TimeoutError as exc:
            status = json.dumps((self.kube.lad(LAD) or {}).get("status"), indent=1)[-6000:]
            raise AssertionError(f"{exc}\nlast status: {status}\n--- operator log ---\n{self.operator.logs()}") from None
        self.mark(what)
        return found

    def apply(self, doc: dict[str, Any]) -> None:
        self.kube.apply(doc)

    def events(self) -> list[dict[str, Any]]:
        uid = self.lad()["metadata"]["uid"]
        return [e for e in self.kube.events(LAD) if (e.get("involvedObject") or {}).get("uid") == uid]

    def reasons(self) -> list[str]:
        return [e["reason"] for e in self.events()]

    def wait_event(self, reason: str, count: int = 1, timeout: float = 60.0) -> dict[str, Any]:
        found = wait_for(lambda: (m := [e for e in self.events() if e["reason"] == reason]) and len(m) >= count
                         and m[-1], timeout=timeout, interval=1.0, message=f"{count} event(s) {reason}")
        return dict(found)

    def annotate(self, verb: str) -> str:
        value = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        self.kube.run("annotate", "lad", LAD, "--overwrite", f"localattn.dev/{verb}={value}")
        return value

    def plugin(self, verb: str) -> str:
        done = _plugin(self, verb, LAD, "-n", self.kube.namespace)
        assert done.returncode == 0, done.stderr
        return str(self.lad()["metadata"]["annotations"][f"localattn.dev/{verb}"])

    def stable_pod_uids(self) -> set[str]:
        pods = self.kube.json("get", "pods", "-l", f"localattn.dev/deployment={LAD},localattn.dev/track=stable")
        return {p["metadata"]["uid"] for p in pods["items"] if not p["metadata"].get("deletionTimestamp")}

    def deployment(self, track: str) -> dict[str, Any] | None:
        out = self.kube.run("get", "deployment", f"{LAD}-{track}", "-o", "json", "--ignore-not-found")
        return json.loads(out) if out.strip() else None


def _gate(ro: dict[str, Any], name: str, bucket: str = "all") -> dict[str, Any] | None:
    gates = (ro.get("lastAnalysis") or {}).get("gates") or []
    return next((g for g in gates if g.get("gate") == name and g.get("bucket", "all") == bucket), None)


def _history(ro: dict[str, Any]) -> list[str]:
    return [h["reason"] for h in ro.get("history") or []]


def _in_order(seen: list[str], wanted: list[str]) -> bool:
    it = iter(seen)
    return all(any(s == w for s in it) for w in wanted)


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    started = time.monotonic()
    state_dir = tmp_path_factory.mktemp("rollout-real")
    work = state_dir / "work"
    (work / "logs").mkdir(parents=True)
    loads = Loads(work, LoadPlan(target="", model=LAD, tokenizer=""))
    operator: Any = None
    cluster = contextlib.ExitStack()  # closed last, after the operator and the load
    try:
        info = cluster.enter_context(process_cluster(state_dir, nodes=2, gpus_per_node=2, models=("tiny-llama",),
                                                     keep=bool(os.environ.get(KEEP))))  # fmt: skip
        kube = Kube(info.kubeconfig)
        prom = url_of("prometheus", state_dir=state_dir)
        assert prom, "the dev cluster has no Prometheus"
        # the operator's /metrics scraped by the dev Prometheus (its operator job), for the dashboard check
        metrics_port = free_port()
        operator = OperatorProcess(info.kubeconfig, work / "logs",
                                   args=("--metrics-port", str(metrics_port), "--metrics-address", "127.0.0.1"))
        write_atomic(prometheus.operator_target_file(prometheus.PrometheusFiles(state_dir), "e2e-rollout"),
                     prometheus.operator_target("127.0.0.1", metrics_port))
        rig = Rig(info, kube, operator, loads, prom, work, t0=started)
        rig.mark(f"cluster up ({state_dir})")
        kube.run("apply", "-f", str(ROOT / "crds" / "localattndeployment.yaml"))
        kube.run("wait", "--for", "condition=established", "--timeout=60s", "crd/localattndeployments.localattn.dev")
        kube.run("apply", "-f", str(ROOT / "examples" / "model-pvc.yaml"))
        model_dir = modelstore.store_dir(state_dir) / "tiny-llama"
        golden = work / "golden.json"
        subprocess.run([sys.executable, "-m", "localattn_cli.main", "model", "golden", "--model", str(model_dir),
                        "--out", str(golden)], check=True, timeout=600, capture_output=True)  # fmt: skip
        cm = kube.run("create", "configmap", GOLDEN, f"--from-file=golden.json={golden}", "--dry-run=client",
                      "-o", "json")  # fmt: skip
        kube.run("apply", "-f", "-", input=cm)
        operator.start()
        rig.apply(manifest(FULL, {"steps": [{"setWeight": 25}, {"setWeight": 50}], "maxSurge": 0}, analysis(prom)))
        lad = wait_for(lambda: (s := (kube.lad(LAD) or {}).get("status") or {}).get("phase") == "Ready"
                       and s.get("readyReplicas") == REPLICAS and s, timeout=POD_START_TIMEOUT, interval=1.0,
                       message="the full-attention baseline Ready")  # fmt: skip
        rig.revisions["baseline"] = lad["rollout"]["stableRevision"]
        url = wait_for(lambda: url_of(LAD, "default", state_dir), timeout=60, message="the Service's proxy address")
        wait_for(lambda: answers(f"{url}/v1/models", times=2 * REPLICAS), timeout=120, interval=1.0,
                 message="every pod answering through the Service")
        rig.mark("baseline Ready and answering")
        loads.plan = LoadPlan(target=url, model=LAD, tokenizer=str(model_dir), rate=2.0, concurrency=4)
        loads.start("steady", 1800)
        rig.load_started = time.monotonic()
        yield rig
    finally:
        loads.stop_all()
        if operator is not None:
            operator.stop()
        print(f"\nmodule wall time {time.monotonic() - started:.0f} s; load: {loads.summary_line('steady')}")
        cluster.close()  # kept running when KEEP is set


# --- 1 -------------------------------------------------------------------------------------------------------


def test_a_good_canary_is_promoted_through_every_step_with_manual_control_and_operator_kills(rig: Rig) -> None:
    """The design's capacity promise for `maxSurge: 0` (weights.transfer, docs/rollout.md "Promotion"): the
    arms never ask for more GPUs than `replicas`, and ready serving pods never drop below `replicas - 1` (one
    pod must go before its GPU takes the replacement). "Never below `replicas`" is what a surge keeps; the
    rollback tests below (maxSurge 1) assert that. Terminating pods count too: they hold their GPU until they
    are gone, and the operator plans a replacement only then (weights.transfer), so even with spare GPUs in
    the cluster the pods holding a GPU never exceed `replicas`."""
    baseline = rig.revisions["baseline"]
    with FleetSampler(rig.kubeconfig, "default", LAD) as fleet:
        rig.apply(manifest(GOOD, {"steps": [{"setWeight": 25}, {"setWeight": 50}], "maxSurge": 0},
                           analysis(rig.prometheus), paired=True))
        ro = rig.wait(lambda r: r.get("canaryRevision") and r.get("phase") == "Progressing", "1: canary started")
        canary = ro["canaryRevision"]
        assert ro["stableRevision"] == baseline != canary

        # pause and resume, each through the annotation and through the plugin, acknowledged by an event
        for n, (verb, via) in enumerate([("pause", "annotation"), ("resume", "plugin"),
                                         ("pause", "plugin"), ("resume", "annotation")]):
            value = rig.annotate(verb) if via == "annotation" else rig.plugin(verb)
            phase = "Paused" if verb == "pause" else "Progressing"
            rig.wait(lambda r, v=verb, x=value, p=phase: (r.get("acknowledged") or {}).get(v) == x
                     and r.get("phase") == p, f"1: {verb} via {via} acknowledged")
            rig.wait_event("RolloutPaused" if verb == "pause" else "RolloutResumed", count=n // 2 + 1)

        # check 4: SIGKILL while step 1 is being analysed; the next operator measures the recorded window
        mid = rig.wait(lambda r: r.get("settledAt") and r.get("stepIndex") == 0, "1: step 1 settled",
                       timeout=POD_START_TIMEOUT)
        rig.operator.kill()
        held = rig.rollout()
        rig.operator.start()
        step2 = rig.wait(lambda r: r.get("stepIndex", 0) >= 1 or r.get("phase") != "Progressing",
                         "1: step 1 analysed after an operator restart", timeout=300)
        assert step2["phase"] in ("Progressing", "Promoting"), step2.get("message")
        assert (step2["startedAt"], step2["canaryRevision"]) == (mid["startedAt"], canary)
        first = [m for m in step2["measurements"] if m["stepIndex"] == 0]
        if not [m for m in held.get("measurements") or [] if m["stepIndex"] == 0]:
            assert first[0]["finishedAt"] == held["nextAnalysisAt"], "the window the killed operator had planned"

        # check 4 again: SIGKILL mid-promotion (shift or handover); the stage survives in status.rollout
        promoting = rig.wait(lambda r: r.get("phase") == "Promoting" or r.get("phase") == "Promoted",
                             "1: step 2 analysed, promoting", timeout=300)
        assert promoting["phase"] == "Promoting", "promoted before the test could kill the operator mid-way"
        rig.operator.kill()
        stage = rig.rollout().get("stage")
        rig.operator.start()
        done = rig.wait(lambda r: r.get("phase") == "Promoted", f"1: promoted (operator killed in {stage})",
                        timeout=3 * POD_START_TIMEOUT)  # shift + handover: 3 pods, one after another
        wait_for(lambda: (s := rig.lad()["status"]).get("phase") == "Ready" and s.get("readyReplicas") == REPLICAS,
                 timeout=120, message="the LAD Ready on the new revision")
    print(f"1: {fleet.summary()}")

    assert done["stableRevision"] == canary and done["previousRevision"] == baseline
    assert _in_order(_history(done), ["RolloutStarted", "RolloutPaused", "RolloutResumed", "RolloutPaused",
                                      "RolloutResumed", "AnalysisSuccessful", "AnalysisSuccessful", "Promoted"])
    passed = {m["stepIndex"] for m in done["measurements"] if m["phase"] == "Successful" and m["canaryRevision"] == canary}
    assert passed == {0, 1}, done["measurements"]
    last = done["lastAnalysis"]
    assert last["phase"] == "Successful" and last["canary"]["revision"] == canary
    for arm in ("stable", "canary"):
        assert last[arm]["requests"] >= 4 and last[arm]["p95LatencySeconds"] > 0
        assert last[arm]["probePerplexity"] > 1 and last[arm]["probeExactMatch"] is not None
    ppl = _gate(done, "quality.perplexity")
    assert ppl is not None and ppl["phase"] == "Successful" and ppl["canary"] / ppl["stable"] <= 1.05
    # the paired comparison ran on both arms' pods (reported; no minAgreement gate here)
    paired = {p["bucket"]: p for p in last["paired"]}
    assert paired["all"]["prompts"] == PAIRED_PROMPTS, last["paired"]
    assert 0 <= paired["all"]["agreement"] <= 1 and paired["all"]["logprobDivergence"] is not None, paired
    assert not [g for g in last["gates"] if g["gate"] == "quality.agreement"], "no floor set, no gate"
    rig.paired["good"] = paired["all"]
    reasons = rig.reasons()
    assert reasons.count("RolloutStarted") == 1 and reasons.count("Promoted") == 1, reasons  # none repeated by kills
    stable = rig.deployment("stable")
    assert stable is not None and stable["spec"]["replicas"] == REPLICAS
    assert stable["spec"]["template"]["metadata"]["labels"]["localattn.dev/revision"] == canary
    arm = rig.deployment("canary")
    assert arm is None or arm["spec"]["replicas"] == 0
    # capacity, at every sampled moment
    assert fleet.samples and fleet.samples[0].ready == REPLICAS
    assert min(s.ready for s in fleet.samples) >= REPLICAS - 1, fleet.summary()
    assert max(s.planned_gpus for s in fleet.samples) <= REPLICAS, fleet.summary()
    assert max(s.gpu_pods_all for s in fleet.samples) <= REPLICAS, fleet.summary()
    # back at full capacity: the sampler's last sample may predate the last stable pod turning Ready
    with FleetSampler(rig.kubeconfig, "default", LAD) as after:
        wait_for(lambda: after.sample().ready == REPLICAS or None, timeout=90, interval=1,
                 message="the fleet back at replicas ready pods after the promotion")
    rig.revisions["good"] = canary


# --- 2 -------------------------------------------------------------------------------------------------------


def test_a_quality_regression_passes_a_latency_only_analysis_and_is_rolled_back_by_the_quality_gate(rig: Rig) -> None:
    good = rig.revisions["good"]
    steps = {"steps": [{"setWeight": 25}, {"pause": {}}, {"setWeight": 33}], "maxSurge": 1}  # 25 and 33: 2+1 pods
    stable_pods = rig.stable_pod_uids()
    with FleetSampler(rig.kubeconfig, "default", LAD) as fleet:
        rig.apply(manifest(BAD, steps, analysis(rig.prometheus, quality=False, e2e=1000)))
        ro = rig.wait(lambda r: r.get("canaryRevision") not in (None, good), "2: bad canary started")
        bad = ro["canaryRevision"]
        paused = rig.wait(lambda r: r.get("phase") == "Paused" and r.get("stepIndex") == 1,
                          "2: step 1 passed a latency-only analysis (paused at step 2)", timeout=POD_START_TIMEOUT)
        latency_only = paused["lastAnalysis"]
        assert latency_only["phase"] == "Successful"
        assert latency_only["canary"]["revision"] == bad and _gate(paused, "latency.e2e") is not None
        assert not [g for g in latency_only["gates"] if g["gate"].startswith("quality.")], latency_only["gates"]
        # the regression is there meanwhile, only not judged (the analysis' own queries, both arms)
        figures = wait_for(lambda: (f := revision_figures(rig.prometheus, "default", LAD, [good, bad], 30, None))
                           and all(x.probe_perplexity for x in f.values()) and f, timeout=120, interval=2.0,
                           message="both arms' probe figures")  # fmt: skip
        ratio = figures[bad].probe_perplexity / figures[good].probe_perplexity
        assert ratio > 1.05, f"perplexity ratio {ratio:.3f}"

        # the same canary, the quality gate on: resumed through the plugin, step 3 fails on quality only
        rig.apply(manifest(BAD, steps, analysis(rig.prometheus, quality=True, e2e=1000, failure_limit=0,
                                                min_agreement=AGREEMENT_FLOOR), paired=True))
        assert rig.rollout()["canaryRevision"] == bad, "analysis (and paired comparison) settings are not a new revision"
        value = rig.plugin("resume")
        rig.wait(lambda r: (r.get("acknowledged") or {}).get("resume") == value and r.get("stepIndex") == 2,
                 "2: resumed through the plugin")
        done = rig.wait(lambda r: r.get("phase") in ("RollingBack", "RolledBack", "Promoting", "Promoted"),
                        "2: step 3 analysed", timeout=300)
        assert done["phase"] in ("RollingBack", "RolledBack"), done.get("message")
        done = rig.wait(lambda r: r.get("phase") == "RolledBack", "2: rolled back", timeout=POD_START_TIMEOUT)
    print(f"2: {fleet.summary()}")

    assert done["stableRevision"] == good and done["rejectedRevision"] == bad and done.get("canaryRevision") is None
    assert _history(done)[-2:] == ["AnalysisFailed", "RollbackComplete"], _history(done)
    gates = {g["gate"]: g for g in done["lastAnalysis"]["gates"] if g.get("bucket", "all") == "all"}
    assert gates["latency.e2e"]["phase"] == "Successful", "latency passed in the very window quality failed"
    failed = [g for g in gates.values() if g["phase"] == "Failed"]
    assert failed and all(g["gate"].startswith("quality.") for g in failed), gates
    ppl = gates["quality.perplexity"]
    # the paired comparison, same prompts to one pod per arm: the bad canary agrees less with its stable (the
    # good revision) than the good one did with the full-attention baseline, and its gate judged its number
    agreement = gates["quality.agreement"]
    bad_paired = {p["bucket"]: p for p in done["lastAnalysis"]["paired"]}["all"]
    good_paired = rig.paired["good"]
    print(f"2: paired agreement {bad_paired['agreement']:.3f} (good canary: {good_paired['agreement']:.3f}), "
          f"logprob divergence {bad_paired['logprobDivergence']:.3f} (good: {good_paired['logprobDivergence']:.3f}), "
          f"first divergence {bad_paired['firstDivergence']} (good: {good_paired['firstDivergence']})")
    assert bad_paired["prompts"] == PAIRED_PROMPTS and agreement["canary"] == bad_paired["agreement"]
    assert agreement["phase"] == ("Failed" if bad_paired["agreement"] < AGREEMENT_FLOOR else "Successful"), agreement
    assert bad_paired["agreement"] < good_paired["agreement"], (bad_paired, good_paired)
    assert bad_paired["logprobDivergence"] > good_paired["logprobDivergence"], (bad_paired, good_paired)
    print(f"2: latency-only step passed with perplexity ratio {ratio:.3f}; rolled back on {ppl['message']}; "
          f"{gates['latency.e2e']['message']}")
    assert ppl["phase"] == "Failed" and ppl["canary"] > ppl["threshold"] * ppl["stable"], ppl
    event = next(e for e in reversed(rig.events()) if e["reason"] == "RolledBack")
    assert event["type"] == "Warning" and "quality.perplexity" in event["message"], event["message"]
    assert f"{ppl['canary']:.4g}" in event["message"] and f"{ppl['stable']:.4g}" in event["message"], event["message"]
    degraded = next(c for c in rig.lad()["status"]["conditions"] if c["type"] == "Degraded")
    assert degraded["status"] == "True" and degraded["reason"] == "RolledBack"
    assert min(s.ready for s in fleet.samples) >= REPLICAS, fleet.summary()
    assert max(s.planned_gpus for s in fleet.samples) <= REPLICAS + 1, fleet.summary()
    assert rig.stable_pod_uids() == stable_pods, "the stable arm was never restarted"


# --- 3 -------------------------------------------------------------------------------------------------------


def _prometheus_stop(rig: Rig) -> None:
    assert procs.stop(rig.info.state_dir, "prometheus"), "Prometheus was not running"


def _prometheus_start(rig: Rig) -> None:
    files = prometheus.PrometheusFiles(rig.info.state_dir)
    procs.start(rig.info.state_dir, "prometheus", prometheus.prometheus_argv(files, int(rig.info.ports["prometheus"])))
    wait_for(lambda: answers(f"{rig.prometheus}/-/ready", times=1), timeout=60, message="Prometheus ready again")


def test_a_latency_regression_holds_through_a_prometheus_outage_then_is_rolled_back_by_the_latency_gate(
        rig: Rig) -> None:
    good = rig.revisions["good"]
    delay = [{"name": "LOCALATTN_TEST_DELAY_MS", "value": str(DELAY_MS)}]
    stable_pods = rig.stable_pod_uids()
    with FleetSampler(rig.kubeconfig, "default", LAD) as fleet:
        rig.apply(manifest(GOOD, {"steps": [{"setWeight": 25}], "maxSurge": 1},
                           analysis(rig.prometheus, e2e=100, failure_limit=0, interval="15s"), env=delay))
        ro = rig.wait(lambda r: r.get("phase") == "Progressing" and r.get("canaryRevision") not in (None, good),
                      "3: delayed canary started")
        slow = ro["canaryRevision"]
        rig.wait(lambda r: r.get("settledAt"), "3: canary ready", timeout=POD_START_TIMEOUT)
        held_before = rig.reasons().count("AnalysisInconclusive")
        _prometheus_stop(rig)
        try:
            rig.mark("3: Prometheus stopped")
            # a provider error is an Inconclusive window that holds: within consecutiveErrorLimit (1) for free ...
            first = rig.wait_event("AnalysisInconclusive", count=held_before + 1, timeout=120)
            assert first["type"] == "Warning", first
            assert first["message"].startswith("holding (provider error 1/1 in a row): "), first["message"]
            assert f"provider error: {slow}: prometheus {rig.prometheus}" in first["message"], first["message"]
            # ... then each one beyond it is missing data: the second and the third charge inconclusiveLimit
            second = rig.wait_event("AnalysisInconclusive", count=held_before + 2, timeout=60)
            assert second["message"].startswith("holding (provider error 2 in a row, beyond consecutiveErrorLimit 1: "
                                                "inconclusive measurement 1, inconclusiveLimit 8): "), second["message"]
            third = rig.wait_event("AnalysisInconclusive", count=held_before + 3, timeout=60)
            assert third["message"].startswith("holding (provider error 3 in a row, beyond consecutiveErrorLimit 1: "
                                               "inconclusive measurement 2, inconclusiveLimit 8): "), third["message"]
            held = rig.wait(lambda r: (r.get("counters") or {}).get("errors", 0) >= 3,
                            "3: three provider-error windows counted in status", timeout=30)
            assert held["phase"] == "Progressing" and held["canaryRevision"] == slow, "held, neither promoted nor failed"
            c = held["counters"]
            assert c["errors"] == c["consecutiveErrors"] >= 3 and c["failed"] == 0 and c["successful"] == 0, c
            assert c["inconclusive"] == c["consecutiveErrors"] - 1, c  # all but the first charged
            windows = [m for m in held["measurements"] if m["canaryRevision"] == slow]
            assert len(windows) >= 3 and all(m["phase"] == "Inconclusive" for m in windows), windows
            assert all("provider error" in m["message"] for m in windows), windows
            last = held["lastAnalysis"]
            assert last["phase"] == "Inconclusive" and last["gates"], last
            assert all(g["phase"] == "Error" and "provider error" in g["message"] for g in last["gates"]), last["gates"]
        finally:
            _prometheus_start(rig)
        rig.mark("3: Prometheus started again")
        done = rig.wait(lambda r: r.get("phase") in ("RollingBack", "RolledBack", "Promoting", "Promoted"),
                        "3: analysed with Prometheus back", timeout=300)
        assert done["phase"] in ("RollingBack", "RolledBack"), done.get("message")
        done = rig.wait(lambda r: r.get("phase") == "RolledBack", "3: rolled back", timeout=180)
    print(f"3: {fleet.summary()}")

    assert done["rejectedRevision"] == slow and done["stableRevision"] == good
    gates = {g["gate"]: g for g in done["lastAnalysis"]["gates"] if g.get("bucket", "all") == "all"}
    e2e = gates["latency.e2e"]
    print(f"3: {e2e['message']}; measurements {[m['phase'] for m in done['measurements'] if m['canaryRevision'] == slow]}")
    assert e2e["phase"] == "Failed" and e2e["canary"] > 2 * e2e["stable"], e2e
    assert all(g["phase"] != "Failed" for name, g in gates.items() if name != "latency.e2e"), gates
    event = next(e for e in reversed(rig.events()) if e["reason"] == "RolledBack")
    assert event["type"] == "Warning" and "latency.e2e" in event["message"], event["message"]
    assert min(s.ready for s in fleet.samples) >= REPLICAS, fleet.summary()
    assert rig.stable_pod_uids() == stable_pods


# --- 4 -------------------------------------------------------------------------------------------------------


def test_promote_now_through_the_plugin_then_abort_through_the_annotation_then_revert(rig: Rig) -> None:
    good = rig.revisions["good"]
    stable_pods = rig.stable_pod_uids()
    steps = {"steps": [{"setWeight": 25}], "maxSurge": 1}
    with FleetSampler(rig.kubeconfig, "default", LAD) as fleet:
        rig.apply(manifest({**GOOD, "sinkTokens": 8}, steps, analysis(rig.prometheus)))
        ro = rig.wait(lambda r: r.get("phase") == "Progressing" and r.get("canaryRevision") not in (None, good),
                      "4: canary started")
        third = ro["canaryRevision"]
        value = rig.plugin("promote")
        rig.wait(lambda r: (r.get("acknowledged") or {}).get("promote") == value and r.get("phase") == "Promoting",
                 "4: promote-now acknowledged")
        assert rig.wait_event("PromotedManually")["message"].startswith(f"promoting {third} now")
        stable = rig.deployment("stable")
        assert stable is not None and stable["spec"]["replicas"] == REPLICAS, "stable kept while the canary is not ready"
        value = rig.annotate("abort")
        aborted = rig.wait(lambda r: (r.get("acknowledged") or {}).get("abort") == value and r.get("phase") == "Aborted",
                           "4: abort acknowledged")
        assert aborted["rejectedRevision"] == third and aborted["stableRevision"] == good
        assert rig.wait_event("RolloutAborted")["type"] == "Warning"
        wait_for(lambda: (d := rig.deployment("canary")) is None or d["spec"]["replicas"] == 0, timeout=60,
                 message="the canary arm emptied")
        degraded = next(c for c in rig.lad()["status"]["conditions"] if c["type"] == "Degraded")
        assert degraded["status"] == "True" and degraded["reason"] == "Aborted"

        rig.apply(manifest(GOOD, steps, analysis(rig.prometheus)))  # the spec back to the stable revision
        idle = rig.wait(lambda r: r.get("phase") == "Idle", "4: spec reverted")
        assert idle["stableRevision"] == good and _history(idle)[-1] == "SpecReverted"
        wait_for(lambda: next(c for c in rig.lad()["status"]["conditions"] if c["type"] == "Degraded")["status"]
                 == "False", timeout=60, message="Degraded cleared")
    print(f"4: {fleet.summary()}")
    assert rig.stable_pod_uids() == stable_pods, "abort and revert never touched stable"
    assert min(s.ready for s in fleet.samples) >= REPLICAS, fleet.summary()


# --- the dashboard ----------------------------------------------------------------------------------------


def test_every_dashboard_panel_has_data_from_the_real_pods_and_operator(rig: Rig) -> None:
    """After the rollouts above (both arms served, the operator scraped by the dev Prometheus), every panel of
    the shipped Grafana dashboard answers with data over the module's time range, as Grafana would draw it."""
    from localattn_cli.dashboard import OPT_IN_PANELS
    from localattn_dev.dashboard_check import failing_panels

    board = json.loads((ROOT / "dashboards" / "localattn.json").read_text())
    span = time.monotonic() - rig.load_started
    failures = failing_panels(rig.prometheus, board, variables={"namespace": "default", "lad": LAD},
                              range_s=span, rate_interval="8s", skip=OPT_IN_PANELS)
    print("dashboard panels without data:\n  " + "\n  ".join(failures))
    assert not failures, "\n".join(failures)
