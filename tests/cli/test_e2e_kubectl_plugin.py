"""`kubectl localattn` as kubectl runs it (a plugin on PATH) against the real control plane; no operator needed.

The verbs must put exactly the annotation `rollout_control` reads on a real LAD, and `status` must print the
table from a status written through the API's status subresource (kubectl 1.20 has no `--subresource`, so the
test writes it with the kubernetes client, as the operator does).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from localattn_operator.duration import parse_time
from localattn_operator.models import GROUP, PLURAL, VERSION, ManualAcknowledged
from localattn_operator.rollout_control import ManualRequest, pending_requests

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
RECORDED = json.loads((Path(__file__).resolve().parent / "recorded_status.json").read_text())


@pytest.fixture(scope="module")
def crd(k8s: Any) -> None:
    k8s.kubectl("apply", "-f", str(ROOT / "crds" / "localattndeployment.yaml"))
    k8s.kubectl("wait", "--for", "condition=established", "--timeout=60s", f"crd/{PLURAL}.{GROUP}")


def plugin(k8s: Any, *args: str) -> subprocess.CompletedProcess[str]:
    """`kubectl localattn ARGS --kubeconfig K`: kubectl finds `kubectl-localattn` on PATH (the venv's bin)."""
    from localattn_dev.assets import kubectl_path

    kubectl = str(kubectl_path())
    path = os.pathsep.join([str(Path(sys.executable).parent), str(Path(kubectl).parent), os.environ.get("PATH", "")])
    env = {**os.environ, "PATH": path}
    env.pop("KUBECTL", None)
    return subprocess.run([kubectl, "localattn", *args, "--kubeconfig", str(k8s.kubeconfig)], env=env,
                          capture_output=True, text=True, timeout=90, check=False)


def test_plugin_is_found_by_kubectl(k8s: Any) -> None:
    from localattn_dev.assets import kubectl_path

    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    listed = subprocess.run([str(kubectl_path()), "plugin", "list"], env={**os.environ, "PATH": path},
                            capture_output=True, text=True, timeout=30, check=False)
    assert "kubectl-localattn" in listed.stdout, listed.stdout + listed.stderr


def test_pause_and_promote_put_the_control_annotations_and_status_prints_the_table(
        k8s: Any, crd: None, namespace: str) -> None:
    lad = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "LocalAttnDeployment", "metadata": {"name": "llm"},
           "spec": {"model": {"uri": "pvc://models/tiny"}, "replicas": 4,
                    "cost": {"gpuHourPrice": 2.5, "currency": "EUR"},
                    "rollout": {"steps": [{"setWeight": 10}, {"setWeight": 25}, {"pause": {}}, {"setWeight": 50}]}}}
    k8s.apply(namespace, lad)
    before = datetime.now(UTC) - timedelta(seconds=1)

    paused = plugin(k8s, "pause", "llm", "-n", namespace)
    assert paused.returncode == 0, paused.stderr
    annotations = k8s.get(namespace, "lad", "llm")["metadata"]["annotations"]
    value = annotations["localattn.dev/pause"]
    stamp = parse_time(value)
    assert stamp is not None and before <= stamp <= datetime.now(UTC) + timedelta(seconds=1)
    assert pending_requests(annotations, ManualAcknowledged()) == [ManualRequest("pause", value)]

    again = plugin(k8s, "pause", "llm", "-n", namespace)  # a repeated command is a new request
    assert again.returncode == 0, again.stderr
    assert k8s.get(namespace, "lad", "llm")["metadata"]["annotations"]["localattn.dev/pause"] != value
    assert plugin(k8s, "promote", "llm", "-n", namespace).returncode == 0
    annotations = k8s.get(namespace, "lad", "llm")["metadata"]["annotations"]
    assert [r.verb for r in pending_requests(annotations, ManualAcknowledged())] == ["pause", "promote"]

    empty = plugin(k8s, "status", "llm", "-n", namespace)
    assert empty.returncode == 0 and "no rollout status yet" in empty.stdout, empty.stderr

    from kubernetes import client, config

    api = config.new_client_from_config(config_file=str(k8s.kubeconfig))
    try:
        client.CustomObjectsApi(api).patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, PLURAL, "llm", {"status": {"rollout": RECORDED}}, _request_timeout=30)
    finally:
        api.close()
    shown = plugin(k8s, "status", "llm", "-n", namespace)
    assert shown.returncode == 0, shown.stderr
    out = shown.stdout
    assert "step 2/4 (setWeight 25); weight desired 25%, achieved 20%" in out
    assert "STABLE aaaaaaaaaa" in out and "CANARY bbbbbbbbbb" in out
    rows = {line.split("  ")[0].strip(): line.split() for line in out.splitlines() if line.strip()}
    assert rows["p95 e2e latency (s)"][-2:] == ["2", "2.1"]
    assert rows["cost / 1M tokens (EUR)"][-2:] == ["17.36", "12.51"]
    assert rows["[512-2048] p95 e2e latency (s)"][-2:] == ["3.1", "2.2"]
    assert rows["quality.perplexity"][2] == "Failed"
    as_json = plugin(k8s, "status", "llm", "-n", namespace, "-o", "json")
    assert json.loads(as_json.stdout)["lastAnalysis"]["canary"]["probePerplexity"] == 19.0


def test_a_missing_lad_is_an_error_from_kubectl(k8s: Any, crd: None, namespace: str) -> None:
    result = plugin(k8s, "abort", "nope", "-n", namespace)
    assert result.returncode != 0 and ("NotFound" in result.stderr or "not found" in result.stderr), result.stderr
