"""The production scrape job (examples/prometheus-scrape.yaml) gives the same target labels as the dev
cluster's file SD, checked with the real Prometheus relabelling code.

Debian's Prometheus has no Kubernetes discovery, so `kubernetes_sd_configs` itself cannot run here. What
can: the example's `relabel_configs`, unchanged, applied by `promtool check service-discovery` (Prometheus'
own discovery + relabelling, printing the resulting targets) to targets that carry the `__meta_kubernetes_*`
labels role `pod` produces for a pod. Those meta labels are emulated below from Prometheus' documented role
`pod` behaviour (one target per container port, init containers included, a port-less container as a bare
pod IP; label and annotation names sanitised to `[a-zA-Z0-9_]`); that emulation is the only part not run
by Prometheus. The dev side goes through `promtool` too, with the dev cluster's own Prometheus config.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import yaml

from localattn_dev import discovery, prometheus

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "prometheus-scrape.yaml"
# Labels that differ by configuration only (intervals), not by what is discovered.
CONFIG_ONLY = {"__scrape_interval__", "__scrape_timeout__"}


def _sanitise(name: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]", "_", name)


def kubernetes_sd_pod_targets(pod: dict[str, Any]) -> list[dict[str, Any]]:
    """What `kubernetes_sd_configs` role pod discovers for `pod` (file-SD form, meta labels included)."""
    meta, spec, status = pod["metadata"], pod["spec"], pod.get("status") or {}
    ip = status.get("podIP", "")
    common = {
        "__meta_kubernetes_namespace": meta["namespace"],
        "__meta_kubernetes_pod_name": meta["name"],
        "__meta_kubernetes_pod_ip": ip,
        "__meta_kubernetes_pod_node_name": spec.get("nodeName", ""),
        "__meta_kubernetes_pod_host_ip": status.get("hostIP", ""),
        "__meta_kubernetes_pod_phase": status.get("phase", ""),
        "__meta_kubernetes_pod_uid": meta.get("uid", ""),
    }
    for key, value in (meta.get("labels") or {}).items():
        common[f"__meta_kubernetes_pod_label_{_sanitise(key)}"] = value
        common[f"__meta_kubernetes_pod_labelpresent_{_sanitise(key)}"] = "true"
    for key, value in (meta.get("annotations") or {}).items():
        common[f"__meta_kubernetes_pod_annotation_{_sanitise(key)}"] = value
        common[f"__meta_kubernetes_pod_annotationpresent_{_sanitise(key)}"] = "true"
    if not ip:
        return []  # Prometheus skips pods without an IP
    targets = []
    containers = [(c, "false") for c in spec.get("containers", [])]
    containers += [(c, "true") for c in spec.get("initContainers", [])]
    for container, init in containers:
        labels = {**common, "__meta_kubernetes_pod_container_name": container["name"],
                  "__meta_kubernetes_pod_container_init": init}  # fmt: skip
        ports = container.get("ports") or []
        if not ports:
            targets.append({"targets": [ip], "labels": labels})
        for port in ports:
            targets.append({
                "targets": [f"{ip}:{port['containerPort']}"],
                "labels": {**labels, "__meta_kubernetes_pod_container_port_name": port.get("name", ""),
                           "__meta_kubernetes_pod_container_port_number": str(port["containerPort"]),
                           "__meta_kubernetes_pod_container_port_protocol": port.get("protocol", "TCP")},
            })  # fmt: skip
    return targets


def pod(name: str, ip: str | None, *, phase: str = "Running", labels: dict[str, str], annotations: dict[str, str],
        containers: list[dict[str, Any]], init: list[dict[str, Any]] | None = None) -> dict[str, Any]:  # fmt: skip
    status: dict[str, Any] = {"phase": phase, "hostIP": "127.1.0.1"}
    if ip:
        status["podIP"] = ip
    return {
        "metadata": {"name": name, "namespace": "team", "uid": f"uid-{name}", "labels": labels, "annotations": annotations},
        "spec": {"nodeName": "localattn-gpu-0", "containers": containers, "initContainers": init or []},
        "status": status,
    }


LAD = {"localattn.dev/deployment": "chat", "localattn.dev/revision": "r1", "app.kubernetes.io/managed-by": "localattn-operator"}
SCRAPE = {"prometheus.io/scrape": "true", "prometheus.io/port": "8000", "prometheus.io/path": "/metrics"}
SERVER = {"name": "vllm", "ports": [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]}
PODS = [
    # The operator's pod shape, a canary with a sidecar port and an init container with a port.
    pod("chat-canary-1", "127.1.0.2", labels={**LAD, "localattn.dev/track": "canary"}, annotations=SCRAPE,
        containers=[SERVER, {"name": "sidecar", "ports": [{"containerPort": 9100}]}],
        init=[{"name": "fetch", "ports": [{"containerPort": 7000}]}]),
    # No track label, no path annotation, a port-less container besides the server.
    pod("chat-2", "127.1.1.2", labels=LAD, annotations={"prometheus.io/scrape": "true", "prometheus.io/port": "8000"},
        containers=[SERVER, {"name": "logger"}]),
    # No port annotation: every container port is a target.
    pod("two-ports", "127.1.0.3", labels={}, annotations={"prometheus.io/scrape": "true", "prometheus.io/path": "/m"},
        containers=[{"name": "a", "ports": [{"containerPort": 8001}, {"containerPort": 8002}]}]),
    pod("not-annotated", "127.1.0.4", labels=LAD, annotations={}, containers=[SERVER]),
    pod("off", "127.1.0.5", labels=LAD, annotations={**SCRAPE, "prometheus.io/scrape": "false"}, containers=[SERVER]),
    pod("pending", None, phase="Pending", labels=LAD, annotations=SCRAPE, containers=[SERVER]),
    pod("finished", "127.1.0.6", phase="Succeeded", labels=LAD, annotations=SCRAPE, containers=[SERVER]),
]  # fmt: skip


def promtool_targets(config: dict[str, Any], job: str, tmp_path: Path, name: str) -> list[dict[str, str]]:
    """The targets (their final labels) real Prometheus discovery + relabelling gives for `job`."""
    path = tmp_path / f"{name}.yml"
    path.write_text(yaml.safe_dump(config))
    check = subprocess.run(["promtool", "check", "config", str(path)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    sd = subprocess.run(["promtool", "check", "service-discovery", "--timeout=3s", str(path), job],
                        capture_output=True, text=True, timeout=60)  # fmt: skip
    assert sd.returncode == 0, sd.stdout + sd.stderr
    kept = [t["labels"] for t in json.loads(sd.stdout) if t["labels"]]  # dropped targets have no labels
    unique = {json.dumps({k: v for k, v in t.items() if k not in CONFIG_ONLY}, sort_keys=True) for t in kept}
    return sorted((json.loads(u) for u in unique), key=lambda t: (t["pod"], t["instance"]))


def production_job_on(file_sd: Path) -> dict[str, Any]:
    """The example's job, unchanged except its discovery: file SD standing in for kubernetes_sd."""
    job = yaml.safe_load(EXAMPLE.read_text())["scrape_configs"][0]
    assert job["kubernetes_sd_configs"] == [{"role": "pod"}]
    del job["kubernetes_sd_configs"]
    job["file_sd_configs"] = [{"files": [str(file_sd)]}]
    return {"scrape_configs": [job]}


def test_production_relabelling_gives_the_dev_file_sd_labels(tmp_path: Path) -> None:
    k8s_sd = tmp_path / "k8s-sd.json"
    k8s_sd.write_text(json.dumps([t for p in PODS for t in kubernetes_sd_pod_targets(p)]))
    production = promtool_targets(production_job_on(k8s_sd), discovery.JOB, tmp_path, "production")

    files = prometheus.PrometheusFiles(tmp_path / "dev")
    files.targets.mkdir(parents=True)
    files.pods_file.write_text(discovery.render_file_sd(PODS))
    dev = promtool_targets(yaml.safe_load(prometheus.config(files)), discovery.JOB, tmp_path, "dev")

    assert dev == production
    by_pod = {(t["pod"], t["instance"]): t for t in dev}
    assert set(by_pod) == {
        ("chat-canary-1", "127.1.0.2:8000"), ("chat-2", "127.1.1.2:8000"),
        ("two-ports", "127.1.0.3:8001"), ("two-ports", "127.1.0.3:8002"),
    }  # fmt: skip
    canary = by_pod[("chat-canary-1", "127.1.0.2:8000")]
    visible = {k: v for k, v in canary.items() if not k.startswith("__")}
    assert visible == {
        "job": "localattn-pods", "instance": "127.1.0.2:8000", "namespace": "team", "pod": "chat-canary-1",
        "node": "localattn-gpu-0", "lad": "chat", "revision": "r1", "track": "canary",
    }  # fmt: skip
    assert canary["__metrics_path__"] == "/metrics" and by_pod[("two-ports", "127.1.0.3:8001")]["__metrics_path__"] == "/m"
    assert "track" not in by_pod[("chat-2", "127.1.1.2:8000")]


def test_debian_prometheus_stops_at_kubernetes_sd_and_nothing_else(tmp_path: Path) -> None:
    """`promtool check config` on the example as shipped: the only complaint is the missing Kubernetes
    discovery of Debian's build (with file SD instead, the same job passes, see above)."""
    check = subprocess.run(["promtool", "check", "config", str(EXAMPLE)], capture_output=True, text=True)
    output = check.stdout + check.stderr
    assert check.returncode != 0
    complaints = [line for line in output.splitlines() if "not found in type" in line]
    assert len(complaints) == 1 and "field kubernetes_sd_configs not found" in complaints[0], output


def test_podmonitor_relabels_to_the_same_label_names() -> None:
    """The PodMonitor cannot run here (no Prometheus Operator); check it selects the operator's pods and
    port and sets the same labels from the same meta labels as the plain job."""
    monitor = yaml.safe_load((ROOT / "examples" / "podmonitor.yaml").read_text())
    assert (monitor["apiVersion"], monitor["kind"]) == ("monitoring.coreos.com/v1", "PodMonitor")
    endpoint = monitor["spec"]["podMetricsEndpoints"][0]
    assert (endpoint["port"], endpoint["path"]) == ("http", "/metrics")
    set_by_monitor = {r["targetLabel"]: r.get("sourceLabels") for r in endpoint["relabelings"] if "targetLabel" in r}
    plain = production_job_on(Path("unused"))["scrape_configs"][0]["relabel_configs"]
    set_by_plain = {r["target_label"]: r["source_labels"] for r in plain if not r.get("target_label", "__").startswith("__")}
    for label in ("node", "lad", "revision", "track"):
        assert set_by_monitor[label] == set_by_plain[label]
    assert next(r for r in endpoint["relabelings"] if r.get("targetLabel") == "job")["replacement"] == discovery.JOB
