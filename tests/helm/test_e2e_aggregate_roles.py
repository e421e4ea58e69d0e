"""The aggregated roles on a real apiserver: Kubernetes' aggregation controller folds them into `edit`, `admin`
and `view`, so a namespace editor manages LocalAttnDeployments and a viewer only reads them."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import yaml

from localattn_dev import testing

pytestmark = pytest.mark.e2e

LAD = "localattndeployments.localattn.dev"


def can_i(kubeconfig: str, user: str, verb: str, resource: str, namespace: str, *extra: str) -> bool:
    proc = testing.kubectl("auth", "can-i", verb, resource, *extra, "-n", namespace, "--as", user,
                           kubeconfig=kubeconfig, check=False)
    answer = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    assert answer in ("yes", "no"), f"can-i {verb} {resource}: {proc.stdout!r} {proc.stderr!r}"
    return answer == "yes"


def test_default_roles_gain_localattndeployments(cluster: Any, chart: Any, render: Any) -> None:
    kubeconfig = str(cluster.kubeconfig)
    for crd in chart.crds:
        testing.kubectl("apply", "-f", "-", input=crd["data"], kubeconfig=kubeconfig)
    release = f"agg-{uuid.uuid4().hex[:6]}"
    roles = [d for d in render(name=release) if d["kind"] == "ClusterRole" and d["metadata"]["name"].endswith(("-edit", "-view"))]
    assert len(roles) == 2
    testing.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(roles), kubeconfig=kubeconfig)
    try:
        with testing.temp_namespace(kubeconfig, prefix="agg-") as namespace:
            for user, role in (("alice", "edit"), ("olivia", "admin"), ("bob", "view")):
                testing.kubectl("create", "rolebinding", f"{user}-{role}", f"--clusterrole={role}", f"--user={user}",
                                "-n", namespace, kubeconfig=kubeconfig)
            # The aggregation controller (in kube-controller-manager) updates the default roles asynchronously.
            testing.wait_for(lambda: can_i(kubeconfig, "alice", "create", LAD, namespace)
                             and can_i(kubeconfig, "bob", "list", LAD, namespace), timeout=60,
                             message="edit/view aggregate the LocalAttnDeployment rules")
            for user in ("alice", "olivia"):
                for verb in ("get", "list", "watch", "create", "update", "patch", "delete"):
                    assert can_i(kubeconfig, user, verb, LAD, namespace), f"{user} cannot {verb}"
                assert can_i(kubeconfig, user, "patch", LAD, namespace, "--subresource=scale")
                assert not can_i(kubeconfig, user, "patch", LAD, namespace, "--subresource=status")
            for verb in ("get", "list", "watch"):
                assert can_i(kubeconfig, "bob", verb, LAD, namespace)
            for verb in ("create", "patch", "delete"):
                assert not can_i(kubeconfig, "bob", verb, LAD, namespace), f"a viewer can {verb}"
            assert not can_i(kubeconfig, "mallory", "get", LAD, namespace), "nobody else gains anything"
    finally:
        testing.kubectl("delete", "clusterrole", "-l", f"app.kubernetes.io/instance={release}", "--wait=false",
                        kubeconfig=kubeconfig, check=False)
