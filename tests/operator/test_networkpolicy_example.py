"""examples/networkpolicy.yaml selects exactly the serving pods the operator renders for examples/deployment.yaml,
opens only their vLLM port, and the apiserver accepts it (server-side dry run on the real control plane)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from localattn_operator import models, render

ROOT = Path(__file__).resolve().parents[2]
POLICY = yaml.safe_load((ROOT / "examples" / "networkpolicy.yaml").read_text())
LAD = yaml.safe_load((ROOT / "examples" / "deployment.yaml").read_text())


def rendered() -> tuple[dict[str, Any], dict[str, Any]]:
    """(pod template, Service) the operator renders for the example LocalAttnDeployment."""
    owner = render.Owner(LAD["metadata"]["name"], "ns", "uid-1")
    spec = models.parse_spec(LAD["spec"])
    return render.render_deployment(owner, spec)["spec"]["template"], render.render_service(owner, spec)


def test_selects_the_serving_pods_of_every_revision() -> None:
    template, service = rendered()
    selector = POLICY["spec"]["podSelector"]["matchLabels"]
    assert selector.items() <= template["metadata"]["labels"].items()
    assert render.LABEL_REVISION not in selector, "a policy that pins a revision would drop the next rollout's pods"
    assert selector == render.selector_labels(LAD["metadata"]["name"])
    # Every pod the Service routes clients to carries the policy's labels, so the policy covers all of them.
    assert selector.items() <= service["spec"]["selector"].items()


def test_opens_only_the_vllm_port_to_clients_and_prometheus() -> None:
    template, _ = rendered()
    (container,) = template["spec"]["containers"]
    (rule,) = POLICY["spec"]["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": container["ports"][0]["containerPort"]}]
    assert POLICY["spec"]["policyTypes"] == ["Ingress"]
    peers = rule["from"]
    assert all(p.keys() <= {"podSelector", "namespaceSelector"} for p in peers), "no ipBlock: no open CIDR"
    prometheus = [p for p in peers if p.get("podSelector", {}).get("matchLabels", {}).get("app.kubernetes.io/name") == "prometheus"]
    assert prometheus and all("namespaceSelector" in p for p in prometheus), "Prometheus from its own namespace only"
    assert template["metadata"]["annotations"]["prometheus.io/port"] == str(container["ports"][0]["containerPort"])


@pytest.mark.e2e
def test_apiserver_accepts_it(k8s: Any, namespace: str) -> None:
    out = k8s.kubectl("apply", "--dry-run=server", "-n", namespace, "-f", str(ROOT / "examples" / "networkpolicy.yaml"))
    assert "networkpolicy.networking.k8s.io/tiny-llama-serving created (server dry run)" in out.stdout
