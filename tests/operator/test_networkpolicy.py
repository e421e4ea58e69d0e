"""spec.networkPolicy: the operator renders one NetworkPolicy per LAD that admits only the Service's clients and
Prometheus to the serving pods' vLLM port; off by default; turning it off deletes it (found by label, owned).

Pure: what is rendered for examples/deployment.yaml. e2e: the real operator (a process) creates it on the dev
cluster's apiserver, follows a change of the clients, and prunes it when turned off. (The dev cluster's pods are
processes, not in a CNI: the policy's *enforcement* is the CNI's; what is tested is what the operator asks for.)
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from localattn_operator import models, render
from localattn_operator.validation import SpecError, validate_spec

ROOT = Path(__file__).resolve().parents[2]
LAD = yaml.safe_load((ROOT / "examples" / "deployment.yaml").read_text())
OWNER = render.Owner(LAD["metadata"]["name"], "ns", "uid-1")


def spec_with(policy: dict[str, Any] | None) -> models.LocalAttnDeploymentSpec:
    raw = copy.deepcopy(LAD["spec"])
    if policy is not None:
        raw["networkPolicy"] = policy
    return validate_spec(raw)


def test_off_by_default() -> None:
    assert render.render_network_policy(OWNER, spec_with(None)) is None
    assert render.render_network_policy(OWNER, spec_with({"enabled": False, "clients": [{"podSelector": {}}]})) is None


def test_selects_every_serving_pod_and_opens_only_the_vllm_port() -> None:
    spec = spec_with({"enabled": True})
    policy = render.render_network_policy(OWNER, spec)
    assert policy is not None
    template = render.render_deployment(OWNER, spec)["spec"]["template"]
    selector = policy["spec"]["podSelector"]["matchLabels"]
    assert selector.items() <= template["metadata"]["labels"].items()
    assert render.LABEL_REVISION not in selector and render.LABEL_TRACK not in selector, "every revision and track"
    assert selector.items() <= render.render_service(OWNER, spec)["spec"]["selector"].items()
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    (rule,) = policy["spec"]["ingress"]
    (container,) = template["spec"]["containers"]
    named = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert rule["ports"] == [{"protocol": "TCP", "port": render.SCRAPE_PORT_NAME}] and render.SCRAPE_PORT_NAME in named
    assert all(p.keys() <= {"podSelector", "namespaceSelector"} and p for p in rule["from"]), "no ipBlock, no open peer"
    assert rule["from"] == [
        {"podSelector": {"matchLabels": {"localattn.dev/client-of": "tiny-llama"}}},
        {"namespaceSelector": {"matchLabels": {"localattn.dev/client-of": "tiny-llama"}}},
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
         "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}},
    ]
    # A child like the others: owned by the LAD (garbage-collected with it), found by the LAD's label.
    assert policy["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    assert policy["metadata"]["labels"][render.LABEL_NAME] == "tiny-llama"
    assert policy["metadata"]["labels"]["app.kubernetes.io/managed-by"] == render.MANAGED_BY


def test_clients_and_prometheus_are_configurable_and_not_part_of_the_revision() -> None:
    custom = {"enabled": True, "clients": [{"namespaceSelector": {"team": "apps"}, "podSelector": {"role": "gateway"}}],
              "prometheus": {"namespaceSelector": {"name": "obs"}}}
    policy = render.render_network_policy(OWNER, spec_with(custom))
    assert policy is not None
    assert policy["spec"]["ingress"][0]["from"] == [
        {"namespaceSelector": {"matchLabels": {"team": "apps"}}, "podSelector": {"matchLabels": {"role": "gateway"}}},
        {"namespaceSelector": {"matchLabels": {"name": "obs"}}},
    ]
    assert render.definition_of(spec_with(custom)).revision == render.definition_of(spec_with(None)).revision


@pytest.mark.parametrize(("policy", "field"), [
    ({"enabled": True, "clients": [{}]}, "spec.networkPolicy.clients[0]"),
    ({"enabled": True, "prometheus": {"podSelector": None}}, "spec.networkPolicy.prometheus"),
    ({"enabled": True, "clients": [{"podSelector": {"a b": "x"}}]}, "spec.networkPolicy.clients[0].podSelector[a b]"),
    ({"enabled": True, "clients": [{"namespaceSelector": {"team": "-x"}}]}, "spec.networkPolicy.clients[0].namespaceSelector"),
    ({"enabled": True, "ipBlock": {"cidr": "0.0.0.0/0"}}, "spec.networkPolicy"),
])
def test_an_open_or_malformed_peer_is_refused_naming_it(policy: dict[str, Any], field: str) -> None:
    with pytest.raises(SpecError) as err:
        spec_with(policy)
    assert any(p.startswith(field) for p in err.value.problems), err.value.problems


# --- e2e: the operator as a process ----------------------------------------------------------------------------

def _lad(namespace: str, policy: dict[str, Any] | None) -> dict[str, Any]:
    lad = copy.deepcopy(LAD)
    lad["metadata"]["namespace"] = namespace
    lad["spec"]["replicas"] = 1
    for demo_only in ("rollout", "analysis", "probe", "cost"):
        lad["spec"].pop(demo_only, None)
    if policy is not None:
        lad["spec"]["networkPolicy"] = policy
    return lad


@pytest.mark.e2e
def test_the_operator_renders_updates_and_prunes_the_policy(k8s: Any, operator: Any, namespace: str) -> None:
    name = LAD["metadata"]["name"]
    policy_name = render.network_policy_name(name)
    k8s.apply(namespace, _lad(namespace, {"enabled": True}))
    policy = k8s.wait_for(lambda: k8s.get(namespace, "networkpolicy", policy_name, missing_ok=True),
                          "the NetworkPolicy", timeout=60)
    lad = k8s.get(namespace, "lad", name)
    assert policy["metadata"]["ownerReferences"][0]["uid"] == lad["metadata"]["uid"]
    assert policy["spec"]["ingress"][0]["ports"] == [{"protocol": "TCP", "port": "http"}]

    k8s.apply(namespace, _lad(namespace, {"enabled": True, "clients": [{"podSelector": {"role": "gateway"}}]}))
    k8s.wait_for(lambda: k8s.get(namespace, "networkpolicy", policy_name)["spec"]["ingress"][0]["from"][0]
                 == {"podSelector": {"matchLabels": {"role": "gateway"}}}, "the clients to change", timeout=60)

    # Someone else's policy with the LAD's label but not owned by it: the pass that prunes ours leaves it alone.
    foreign = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
               "metadata": {"name": "mine", "labels": {render.LABEL_NAME: name}},
               "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}}
    k8s.apply(namespace, foreign)
    k8s.apply(namespace, _lad(namespace, {"enabled": False}))
    k8s.wait_for(lambda: k8s.get(namespace, "networkpolicy", policy_name, missing_ok=True) is None,
                 "the policy to be pruned", timeout=60)
    assert k8s.get(namespace, "networkpolicy", "mine", missing_ok=True) is not None
    assert "Warning" not in {e["type"] for e in k8s.events(namespace, name)}, k8s.events(namespace, name, "Warning")
