"""What a default install creates, and how values change it (rendered by Helm v4, no cluster)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from localattn_operator.crd import render_yaml

CHART_DIR = Path(__file__).resolve().parents[2] / "helm" / "localattn"
NAMESPACE = "localattn-system"


def only(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    matches = [d for d in docs if d["kind"] == kind]
    assert len(matches) == 1, f"expected one {kind}, got {[m['metadata']['name'] for m in matches]}"
    return matches[0]


def container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    containers = only(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    result: dict[str, Any] = containers[0]
    return result


def env(docs: list[dict[str, Any]]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container(docs)["env"]}


@pytest.mark.parametrize(
    "values",
    [
        {},
        {"watchNamespaces": ["team-a", "team-b"]},
        {"metrics": {"serviceMonitor": {"enabled": True}}, "serviceAccount": {"create": False, "name": "ops"}},
        {"replicaCount": 2},
    ],
    ids=["defaults", "watch-namespaces", "servicemonitor-existing-sa", "replicas"],
)
def test_lint_is_clean_in_strict_mode(values: dict[str, Any]) -> None:
    import helm_python as helm

    report = helm.lint(CHART_DIR, values, strict=True, namespace=NAMESPACE, kube_version="v1.20.2")
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


def test_crd_copy_is_the_generated_crd(chart: Any) -> None:
    """Helm installs crds/ verbatim: the copy must be exactly what `localattn crd generate` writes."""
    copy = CHART_DIR / "crds" / "localattndeployment.yaml"
    assert copy.read_text() == render_yaml(), "run `make crd` (it must write crds/ and helm/localattn/crds/)"
    assert [(c["filename"], c["data"]) for c in chart.crds] == [
        ("localattn/crds/localattndeployment.yaml", render_yaml())
    ]


def test_default_install_objects(render: Any) -> None:
    docs = render()
    assert sorted((d["kind"], d["metadata"]["name"]) for d in docs) == [
        ("ClusterRole", "la-localattn"),
        ("ClusterRole", "la-localattn-discovery"),
        ("ClusterRole", "la-localattn-edit"),
        ("ClusterRole", "la-localattn-view"),
        ("ClusterRoleBinding", "la-localattn"),
        ("ClusterRoleBinding", "la-localattn-discovery"),
        ("Deployment", "la-localattn"),
        ("Role", "la-localattn-leader-election"),
        ("RoleBinding", "la-localattn-leader-election"),
        ("Service", "la-localattn-metrics"),
        ("ServiceAccount", "la-localattn"),
    ]
    for doc in docs:
        if doc["kind"] not in ("ClusterRole", "ClusterRoleBinding"):
            assert doc["metadata"]["namespace"] == NAMESPACE
        assert doc["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm"


def test_single_replica_rolls_with_a_follower_first(render: Any) -> None:
    """With leader election the new pod waits on the Lease until the old one hands it back: a rolling update
    never runs two reconcilers; no PodDisruptionBudget for one replica (it would block every drain)."""
    docs = render()
    spec = only(docs, "Deployment")["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
    assert "affinity" not in spec["template"]["spec"]
    assert not [d for d in docs if d["kind"] == "PodDisruptionBudget"]


def test_without_leader_election_one_replica_recreated(render: Any) -> None:
    docs = render({"leaderElection": {"enabled": False}})
    assert only(docs, "Deployment")["spec"]["strategy"] == {"type": "Recreate"}
    assert not [d for d in docs if d["kind"] in ("Role", "RoleBinding")]
    assert not {"LOCALATTN_LEADER_ELECTION_NAMESPACE"} & set(env(docs))


def test_replicas_get_a_disruption_budget_and_spread(render: Any) -> None:
    docs = render({"replicaCount": 3})
    deployment = only(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 3
    pdb = only(docs, "PodDisruptionBudget")
    assert pdb["apiVersion"] == "policy/v1" and pdb["metadata"]["namespace"] == NAMESPACE  # offline: a current release
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    term = deployment["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"][
        "preferredDuringSchedulingIgnoredDuringExecution"][0]["podAffinityTerm"]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert term["labelSelector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]


def test_leader_election_settings_reach_the_operator(render: Any) -> None:
    from localattn_operator.settings import Settings

    docs = render({"leaderElection": {"leaseDurationSeconds": 20, "renewDeadlineSeconds": 12, "retryPeriodSeconds": 3}})
    with pytest.MonkeyPatch.context() as mp:
        for name, value in env(docs).items():
            mp.setenv(name, value)
        settings = Settings.from_env()
    assert settings.leader_election_namespace == NAMESPACE and settings.lease_name == "la-localattn"
    assert (settings.lease_duration_seconds, settings.renew_deadline_seconds, settings.retry_period_seconds) == (20, 12, 3)
    role = only(docs, "Role")
    assert role["metadata"]["namespace"] == NAMESPACE


def test_operator_command_settings_and_probes(render: Any) -> None:
    docs = render()
    c = container(docs)
    assert c["command"] == ["localattn"]
    assert c["args"] == ["operator", "run", "--liveness", "http://0.0.0.0:8081/healthz"]
    assert env(docs) == {
        "LOCALATTN_RESYNC_SECONDS": "60",
        "LOCALATTN_COALESCE_SECONDS": "0.3",
        "LOCALATTN_METRICS_PORT": "8080",
        "LOCALATTN_LEADER_ELECTION_NAMESPACE": NAMESPACE,
        "LOCALATTN_LEASE_NAME": "la-localattn",
        "LOCALATTN_LEASE_DURATION_SECONDS": "15",
        "LOCALATTN_RENEW_DEADLINE_SECONDS": "10",
        "LOCALATTN_RETRY_PERIOD_SECONDS": "2",
        "PYTHONUNBUFFERED": "1",
    }
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"metrics": 8080, "health": 8081}
    for probe in ("livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert c["image"] == "ghcr.io/localattn/localattn-operator:0.1.0"  # the chart's appVersion


def test_the_cli_accepts_the_rendered_arguments(render: Any) -> None:
    """The chart and `localattn operator run` agree on flags (a renamed flag would crash-loop the pod)."""
    import argparse

    from localattn_cli import operator_cmd

    parser = argparse.ArgumentParser(prog="localattn")
    operator_cmd.add_parser(parser.add_subparsers(dest="command", required=True))
    args = container(render({"watchNamespaces": ["a", "b"], "verbose": True}))["args"]
    parsed = parser.parse_args(args)
    assert parsed.namespace == ["a", "b"] and parsed.verbose is True
    assert parsed.liveness == "http://0.0.0.0:8081/healthz"


def test_settings_come_from_values(render: Any) -> None:
    from localattn_operator.settings import Settings

    docs = render({"resyncSeconds": 15, "coalesceSeconds": 1.5, "metrics": {"port": 9100}, "health": {"port": 9101}})
    with pytest.MonkeyPatch.context() as mp:
        for name, value in env(docs).items():
            mp.setenv(name, value)
        assert Settings.from_env() == Settings(resync_seconds=15.0, coalesce_seconds=1.5, metrics_port=9100,
                                               leader_election_namespace=NAMESPACE, lease_name="la-localattn")
    c = container(docs)
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"metrics": 9100, "health": 9101}
    assert "http://0.0.0.0:9101/healthz" in c["args"]


def test_metrics_service_targets_the_operator_pod(render: Any) -> None:
    docs = render()
    svc = only(docs, "Service")
    assert svc["spec"]["ports"] == [{"name": "metrics", "port": 8080, "targetPort": "metrics", "protocol": "TCP"}]
    pod_labels = only(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    assert not [d for d in docs if d["kind"] == "ServiceMonitor"]


def test_service_monitor_is_opt_in(render: Any) -> None:
    docs = render({"metrics": {"serviceMonitor": {"enabled": True, "interval": "15s", "labels": {"release": "prom"}}}})
    monitor = only(docs, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "prom"
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    assert monitor["spec"]["endpoints"][0]["interval"] == "15s"
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    assert monitor["spec"]["selector"]["matchLabels"].items() <= only(docs, "Service")["metadata"]["labels"].items()


def test_scheduling_and_pod_metadata_values(render: Any) -> None:
    toleration = {"key": "dedicated", "operator": "Equal", "value": "ops", "effect": "NoSchedule"}
    affinity = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "kubernetes.io/os", "operator": "In", "values": ["linux"]}]}]}}}
    docs = render({
        "nodeSelector": {"pool": "system"}, "tolerations": [toleration], "affinity": affinity,
        "podAnnotations": {"example.com/team": "ml"}, "podLabels": {"team": "ml"},
        "image": {"repository": "registry.local/op", "tag": "dev", "pullPolicy": "Always"},
        "imagePullSecrets": [{"name": "regcred"}],
    })
    pod = only(docs, "Deployment")["spec"]["template"]
    assert pod["spec"]["nodeSelector"] == {"pool": "system"}
    assert pod["spec"]["tolerations"] == [toleration]
    assert pod["spec"]["affinity"] == affinity
    assert pod["spec"]["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod["metadata"]["annotations"] == {"example.com/team": "ml"}
    assert pod["metadata"]["labels"]["team"] == "ml"
    assert pod["spec"]["containers"][0]["image"] == "registry.local/op:dev"
    assert pod["spec"]["containers"][0]["imagePullPolicy"] == "Always"


def test_image_digest_wins_over_tag(render: Any) -> None:
    digest = "sha256:" + "ab" * 32
    docs = render({"image": {"repository": "registry.local/op", "tag": "dev", "digest": digest}})
    assert container(docs)["image"] == f"registry.local/op@{digest}"


def test_existing_service_account(render: Any) -> None:
    docs = render({"serviceAccount": {"create": False, "name": "ops-bot"}})
    assert not [d for d in docs if d["kind"] == "ServiceAccount"]
    assert only(docs, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == "ops-bot"
    for binding in (d for d in docs if d["kind"].endswith("Binding")):
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "ops-bot", "namespace": NAMESPACE}]


def test_rbac_can_be_left_to_the_cluster_admin(render: Any) -> None:
    kinds = {d["kind"] for d in render({"rbac": {"create": False}})}
    assert kinds == {"ServiceAccount", "Deployment", "Service"}


def test_fullname_override_names_everything(render: Any) -> None:
    docs = render({"fullnameOverride": "lattn"})
    names = {d["metadata"]["name"] for d in docs}
    assert names == {"lattn", "lattn-discovery", "lattn-metrics", "lattn-edit", "lattn-view", "lattn-leader-election"}
