"""`make demo` / `localattn dev demo`: a local-attention revision rolled out on real vLLM pods, and a bad one.

The story, on the embedded default (process-mode pods, HAProxy, Prometheus, the operator as a process):

1. `examples/deployment.yaml`: the full-attention baseline, 2 replicas of the tiny trained model, with the
   quality probe on a golden set built from the model itself; load through the Service's proxy address.
2. `examples/deployment-local.yaml`: the same model with sink + window attention: a canary through the spec's
   steps (`status.rollout`), to be promoted by the analysis.
3. `examples/deployment-bad.yaml`: a tiny window, no sinks, no global layer: to be rolled back by the gates.
   The demo exits non-zero when either outcome differs.
4. A summary of the revisions side by side, and a report: `<demo dir>/demo-report/{timeline.png,summary.md}`.

All the logic is here (scripts/demo.sh is a thin wrapper); what is pure lives in `demo_view`/`demo_report`.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from localattn_dev import demo_view as view
from localattn_dev import modelstore, procs
from localattn_dev.demo_io import DemoError, Kube, LoadPlan, Loads, Screen, revision_figures
from localattn_dev.demo_report import write_report
from localattn_dev.devurls import url_of
from localattn_dev.ports import free_port
from localattn_dev.prometheus import PrometheusFiles, operator_target, operator_target_file
from localattn_dev.serviceproxy import write_atomic
from localattn_operator.analysis import Figures

ROOT = Path(__file__).resolve().parents[2]
LAD = "tiny-llama"
GOLDEN_CONFIGMAP = "tiny-llama-golden"
POLL_SECONDS = 3.0
LIVE_WINDOW_SECONDS = 30.0
OUTCOMES = {"Promoted": "promoted", "RolledBack": "rolled back", "Aborted": "aborted"}
EXAMPLES = {"baseline": "deployment.yaml", "local": "deployment-local.yaml", "bad": "deployment-bad.yaml"}


def default_demo_dir() -> Path:
    return Path(os.environ.get("LOCALATTN_DEMO_DIR") or ROOT / ".localattn")


def example(name: str) -> dict[str, Any]:
    return dict(yaml.safe_load((ROOT / "examples" / EXAMPLES[name]).read_text()))


class Demo:
    def __init__(self, cluster_dir: Path | None, demo_dir: Path, model: str, with_bad: bool) -> None:
        self.cluster_dir, self.demo_dir, self.model, self.with_bad = cluster_dir, demo_dir, model, with_bad
        self.screen = Screen()
        self.started = datetime.now(UTC)
        self.t0 = time.monotonic()
        self.samples: list[view.Sample] = []
        self.decisions: list[view.Decision] = []
        self.names: dict[str, str] = {}
        self.unnamed: list[str] = []  # descriptions of applied specs whose revision has not shown up yet
        self.outcomes: dict[str, str] = {}
        self.segments: dict[str, str] = {}  # revision -> load segment during which it alone served
        self.notes: list[str] = []
        self.history_seen = 0
        self.kube: Kube
        self.loads = Loads(demo_dir, LoadPlan(target="", model=LAD, tokenizer=""))
        self.prometheus: str | None = None
        self.spec = example("baseline")["spec"]
        self.price = float((self.spec.get("cost") or {}).get("gpuHourPrice") or 0) or None
        self.currency = str((self.spec.get("cost") or {}).get("currency") or "USD")

    # --- output -----------------------------------------------------------------------------------------

    def now(self) -> float:
        return time.monotonic() - self.t0

    def step(self, text: str) -> None:
        self.screen.end_block()
        print(f"\n\033[1m== [{self.now():5.0f}s] {text}\033[0m", flush=True)

    def decide(self, text: str) -> None:
        self.decisions.append(view.Decision(self.now(), text))
        self.screen.line(f"  >> [{self.now():5.0f}s] {text}")

    # --- observing --------------------------------------------------------------------------------------

    def observe(self) -> tuple[view.Sample, dict[str, Any]]:
        lad = self.kube.lad(LAD) or {}
        groups = view.pod_groups(self.kube.pods(LAD))
        for rev in groups:
            if rev not in self.names and self.unnamed:  # pods left from before the first apply stay unnamed
                self.names[rev] = self.unnamed.pop(0)
        figures = revision_figures(self.prometheus, self.kube.namespace, LAD, list(groups), LIVE_WINDOW_SECONDS,
                                   self.price)  # fmt: skip
        sample = view.Sample(self.now(), view.arm_samples(groups, figures), view.rollout_view(lad), view.lad_phase(lad))
        for d in view.history_decisions(lad, self.started, self.history_seen):
            self.history_seen += 1
            self.decisions.append(d)
            self.screen.line(f"  >> [{d.t:5.0f}s] operator: {d.text}")
        return sample, lad

    def watch(self, until: Callable[[view.Sample, dict[str, Any]], bool], timeout: float, what: str) -> view.Sample:
        deadline = time.monotonic() + timeout
        previous: view.Sample | None = None
        while True:
            sample, lad = self.observe()
            self.samples.append(sample)
            self.screen.show(view.format_sample(sample, self.names, self.currency), view.changed(previous, sample))
            previous = sample
            if until(sample, lad):
                self.screen.end_block()
                return sample
            if time.monotonic() > deadline:
                raise DemoError(f"timed out after {timeout:.0f}s waiting for {what}")
            time.sleep(POLL_SECONDS)

    # --- the steps --------------------------------------------------------------------------------------

    def bring_up(self) -> None:
        from localattn_dev.controlplane import up

        self.step("local control plane, HAProxy, Prometheus, process-mode pods (localattn dev up --pods process)")
        info = up(self.cluster_dir, nodes=2, gpus_per_node=2, node_mode="process", use_existing=False,
                  models=(self.model,))  # fmt: skip
        agent = procs.load(info.state_dir, "node-agent")
        if agent is not None and "process" not in agent.argv:
            raise DemoError(f"the dev cluster in {info.state_dir} runs simulated pods; `make demo-down` first")
        self.cluster_dir = info.state_dir
        self.kube = Kube(info.kubeconfig)
        self.prometheus = url_of("prometheus", state_dir=info.state_dir)
        print(f"{'started' if info.started else 'already running'}: {info.server}; Prometheus {self.prometheus}")
        print(self.kube.run("get", "nodes", "-o", "wide"), end="")

        self.step("CRD (generated from the pydantic models) and the operator")
        print(self.kube.run("apply", "-f", str(ROOT / "crds" / "localattndeployment.yaml")).strip())
        self.kube.run("wait", "--for", "condition=established", "--timeout=60s",
                      "crd/localattndeployments.localattn.dev")  # fmt: skip
        procs.stop(self.demo_dir, "operator")  # a fresh operator: this checkout's code
        (self.demo_dir / "logs").mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "KUBECONFIG": str(info.kubeconfig), "LOCALATTN_RESYNC_SECONDS": "10",
               "LOCALATTN_PROMETHEUS_URL": self.prometheus or ""}  # fmt: skip
        metrics_port = free_port()  # scraped by the dev Prometheus' operator job: the dashboard's operator panels
        record = procs.start(self.demo_dir, "operator",
                             [sys.executable, "-m", "localattn_cli.main", "operator", "run",
                              "--metrics-port", str(metrics_port), "--metrics-address", "127.0.0.1"],
                             env, log_path=self.demo_dir / "logs" / "operator.log", cwd=ROOT)  # fmt: skip
        write_atomic(operator_target_file(PrometheusFiles(info.state_dir), "demo"),
                     operator_target("127.0.0.1", metrics_port))
        print(f"operator: pid {record.pid}, log {record.log}, metrics http://127.0.0.1:{metrics_port}/metrics")

    def prepare(self) -> None:
        self.step("a clean start: no LAD from an earlier run")
        if self.kube.lad(LAD) is not None:
            self.kube.run("delete", "lad", LAD, "--wait=true", timeout=180)
        self.watch(lambda s, _: not s.arms, 180, "the previous run's pods to go")
        self.samples.clear()  # the timeline and the serving windows start with this run's baseline

        self.step("the model volume (examples/model-pvc.yaml) and the probe's golden set")
        print(self.kube.run("apply", "-f", str(ROOT / "examples" / "model-pvc.yaml")).strip())
        golden = self.demo_dir / f"golden-{self.model}.json"
        model_dir = modelstore.store_dir(self.cluster_dir or Path()) / self.model
        if not golden.exists():
            subprocess.run([sys.executable, "-m", "localattn_cli.main", "model", "golden", "--model", str(model_dir),
                            "--out", str(golden)], check=True, timeout=600)  # fmt: skip
        cm = self.kube.run("create", "configmap", GOLDEN_CONFIGMAP, f"--from-file=golden.json={golden}",
                           "--dry-run=client", "-o", "json")  # fmt: skip
        print(self.kube.run("apply", "-f", "-", input=cm).strip())
        self.loads = Loads(self.demo_dir, LoadPlan(target="", model=LAD, tokenizer=str(model_dir)))

    def apply(self, name: str) -> None:
        manifest = example(name)
        spec = manifest["spec"]
        if self.model != "tiny-llama":
            spec["model"]["uri"] = f"pvc://models/{self.model}"
        provider = spec.setdefault("analysis", {}).setdefault("provider", {})
        if "prometheus" in provider and self.prometheus:
            provider["prometheus"]["url"] = self.prometheus
        described = view.describe_attention(spec)
        self.unnamed.append(described)
        self.decide(f"kubectl apply -f examples/{EXAMPLES[name]} ({described})")
        print(f"     ({self.kube.apply(manifest)}; analysis.provider.prometheus.url = {self.prometheus})")

    def baseline(self) -> str:
        self.step(f"kubectl apply -f examples/{EXAMPLES['baseline']}: the full-attention baseline, 2 replicas")
        self.apply("baseline")
        replicas = int(self.spec.get("replicas", 1))
        done = self.watch(lambda s, _: len(s.arms) == 1 and s.arms[0].ready == replicas, 600,
                          "the baseline's vLLM pods to become Ready")  # fmt: skip
        rev = done.arms[0].revision
        self.outcomes[rev] = "baseline"
        self.step("kubectl get lad,deploy,pods -o wide")
        print(self.kube.run("get", "lad,deploy,pods", "-o", "wide"), end="")
        url = None
        for _ in range(30):
            url = url_of(LAD, self.kube.namespace, self.cluster_dir)
            if url:
                break
            time.sleep(1)
        if url is None:
            raise DemoError(f"the Service {LAD} has no proxy address (see {self.cluster_dir}/logs/dataplane.log)")
        self.loads.plan = LoadPlan(target=url, model=LAD, tokenizer=self.loads.plan.tokenizer)
        self.watch(lambda s, _: answers(f"{url}/v1/models", times=2 * replicas), 120,
                   "every pod to answer through the Service")  # Ready alone has been seen before /health  # fmt: skip
        self.step(f"load through the Service's proxy address {url} (localattn load, prompts around 256 tokens)")
        self.segment("baseline", rev, 40)
        return rev

    def segment(self, segment: str, revision: str, duration: float) -> None:
        """A bounded load segment with the fleet on one revision: its per-request results give the buckets."""
        self.loads.start(segment, duration)
        self.watch(lambda s, _: not self.loads.running(segment), duration + 90, f"load segment {segment}")
        print(f"  load ({segment}): {self.loads.summary_line(segment)}")
        self.segments[revision] = segment

    def roll(self, name: str, previous: str) -> tuple[str | None, str | None]:
        """Apply a revision with load running; return its revision and the rollout's final phase (None: the
        operator reported no rollout, the Deployment rolled in place)."""
        self.loads.start(f"rollout-{name}", 900)
        self.apply(name)
        replicas = int(self.spec.get("replicas", 1))
        wired: list[bool] = []

        def finished(s: view.Sample, lad: dict[str, Any]) -> bool:
            if s.rollout is not None and s.rollout.canary_revision:
                wired[:] = [True]
            if wired and s.rollout is not None:
                return s.rollout.phase in ("Promoted", "RolledBack", "Aborted") and all(
                    a.ready == a.pods for a in s.arms) and len(s.arms) == 1
            others = [a for a in s.arms if a.revision != previous]
            return len(s.arms) == 1 and bool(others) and others[0].ready == replicas

        try:
            last = self.watch(finished, 900, f"the {name} revision's rollout to finish")
        finally:
            self.loads.stop(f"rollout-{name}")
        new = next((rev for rev, desc in self.names.items() if desc == view.describe_attention(example(name)["spec"])),
                   None)  # fmt: skip
        phase = last.rollout.phase if wired and last.rollout is not None else None
        self.decide(f"{name} revision {new}: {phase or 'rolled in place'}")
        if new is not None:
            self.outcomes[new] = OUTCOMES.get(phase or "", phase or "rolled in place (no canary analysis)")
        return new, phase

    def rolled_back_numbers(self) -> None:
        uid = ((self.kube.lad(LAD) or {}).get("metadata") or {}).get("uid")
        for event in self.kube.events(LAD):  # events outlive a deleted LAD of the same name: this one's only
            if event.get("reason") in ("RolledBack", "AnalysisFailed") and \
                    (event.get("involvedObject") or {}).get("uid") == uid:
                print(f"  event {event['reason']}: {event.get('message', '')}")

    def summary(self) -> None:
        self.step("summary: the revisions side by side")
        windows = view.serving_windows(self.samples)
        rows = []
        for rev, (first, last) in windows.items():
            at = datetime.fromtimestamp(self.started.timestamp() + last, UTC)
            span = max(10.0, last - first)
            figs = revision_figures(self.prometheus, self.kube.namespace, LAD, [rev], span, self.price, at=at)
            result = self.loads.result(self.segments[rev]) if rev in self.segments else None
            boundaries = (self.spec.get("analysis") or {}).get("lengthBuckets") or [256]
            buckets = tuple(view.bucket_figures(result, boundaries)) if result else ()
            rows.append(view.RevisionSummary(rev, self.names.get(rev, "?"), self.outcomes.get(rev, "?"), span,
                                             figs.get(rev, Figures()), buckets))  # fmt: skip
        table = view.summary_markdown(rows, self.currency)
        print(table)
        for note in self.notes:
            print(f"note: {note}")
        paths = write_report(self.demo_dir / "demo-report", self.samples, self.decisions, self.names, table,
                             self.notes)  # fmt: skip
        print(f"\nreport: {paths[0]}\n        {paths[1]}")

    def run(self) -> int:
        self.bring_up()
        self.prepare()
        stable = self.baseline()
        self.step(f"kubectl apply -f examples/{EXAMPLES['local']}: sink + window attention, load running")
        local, phase = self.roll("local", stable)
        bad_phase: str | None = None
        if local is not None and phase in (None, "Promoted"):
            self.step("the new revision alone under load (per length bucket)")
            self.segment("local", local, 30)
        if phase is None:
            self.notes.append("the operator wrote no status.rollout: progressive delivery is not wired into the "
                              "reconciler yet, so the revision change rolled the Deployment in place (no canary, no "
                              "analysis) and a bad revision would not be rolled back: the demo does not apply one.")
        elif self.with_bad and local is not None and phase in ("Promoted", "RolledBack"):
            if phase == "RolledBack":
                self.notes.append("the local-attention revision was rolled back (see the decisions for the gate and "
                                  "its numbers); the bad revision is tried against the baseline instead.")
            self.step(f"kubectl apply -f examples/{EXAMPLES['bad']}: a tiny window, no sinks, no global layer")
            _, bad_phase = self.roll("bad", local if phase == "Promoted" else stable)
            self.rolled_back_numbers()
        self.summary()
        print(self.kube.run("get", "lad"), end="")
        print(f"\nexport KUBECONFIG={self.kube.kubeconfig}\nStop everything: make demo-down")
        # The story is the product's promise: a good revision promoted, a bad one rolled back. Anything else is a
        # failed demo, said plainly and in the exit status.
        if phase != "Promoted" or (self.with_bad and bad_phase != "RolledBack"):
            print(f"\ndemo FAILED its story: local-attention revision {phase or 'not rolled out'}, bad revision "
                  f"{bad_phase or 'not tried'} (expected Promoted and RolledBack; see the decisions above)")
            return 1
        return 0


def answers(url: str, times: int) -> bool:
    """`times` requests in a row answered 200 (the proxy spreads them over the ready pods)."""
    try:
        for _ in range(times):
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status != 200:
                    return False
    except (OSError, ValueError):
        return False
    return True


def down(cluster_dir: Path | None, demo_dir: Path) -> int:
    """Stop the load segments and the operator the demo started, then the dev cluster (every pod process)."""
    from localattn_dev.controlplane import down as cluster_down
    from localattn_dev.paths import resolve_state_dir
    from localattn_dev.podlayout import pods_dir

    loads = Loads(demo_dir, LoadPlan("", "", ""))
    stopped = loads.stop_all()
    if procs.stop(demo_dir, "operator"):
        stopped.append("operator")
    sd = resolve_state_dir(cluster_dir)
    operator_target_file(PrometheusFiles(sd), "demo").unlink(missing_ok=True)
    pods = list(procs.load_all(pods_dir(sd)).values())  # read before `down` forgets them
    stopped += cluster_down(sd)
    left = sorted({pid for r in pods for pid in procs.session_members(r)})
    print(f"stopped: {', '.join(stopped) if stopped else 'nothing was running'}")
    print(f"pod process sessions recorded: {len(pods)} (PIDs {', '.join(str(r.pid) for r in pods) or '-'}); "
          f"processes still running: {left or 'none'}")
    return 1 if left else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="localattn dev demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--state-dir", type=Path, default=None, help="the dev cluster (default: $LOCALATTN_DEV_DIR)")
    parser.add_argument("--demo-dir", type=Path, default=None, help="operator log, load results, report "
                        "(default: $LOCALATTN_DEMO_DIR or .localattn/)")
    parser.add_argument("--model", default="tiny-llama", choices=modelstore.MODELS,
                        help="tiny-random: seconds to build, meaningless quality (for trying the demo out)")
    parser.add_argument("--no-bad", action="store_true", help="skip the bad revision")
    parser.add_argument("--down", action="store_true", help="stop what the demo started (make demo-down)")
    args = parser.parse_args(argv)
    demo_dir = (args.demo_dir or default_demo_dir()).absolute()
    demo_dir.mkdir(parents=True, exist_ok=True)
    if args.down:
        return down(args.state_dir, demo_dir)
    started = time.monotonic()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that `finally` stops the load segments
    demo = Demo(args.state_dir, demo_dir, args.model, with_bad=not args.no_bad)
    try:
        code = demo.run()
    except (DemoError, TimeoutError, subprocess.CalledProcessError) as exc:
        print(f"\ndemo failed: {exc}\n(operator log: {demo_dir}/logs/operator.log; `make demo-down` stops it all)",
              file=sys.stderr)  # fmt: skip
        code = 1
    finally:
        Loads(demo_dir, LoadPlan("", "", "")).stop_all()
    print(f"demo wall time: {time.monotonic() - started:.0f} s")
    return code


if __name__ == "__main__":
    sys.exit(main())
