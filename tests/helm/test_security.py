"""The operator pod is locked down by default (restricted Pod Security Standard) and still gets its token."""

from __future__ import annotations

from typing import Any


def pod_spec(docs: list[dict[str, Any]]) -> dict[str, Any]:
    spec: dict[str, Any] = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"]
    return spec


def test_non_root_read_only_no_capabilities(render: Any) -> None:
    spec = pod_spec(render())
    pod = spec["securityContext"]
    assert pod["runAsNonRoot"] is True and pod["runAsUser"] == 65532
    assert pod["seccompProfile"] == {"type": "RuntimeDefault"}
    (c,) = spec["containers"]
    sc = c["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] == 65532
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["privileged"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert not spec.get("hostNetwork") and not spec.get("hostPID") and not spec.get("hostIPC")


def test_only_scratch_space_is_writable(render: Any) -> None:
    spec = pod_spec(render())
    assert spec["volumes"] == [{"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}}]
    assert spec["containers"][0]["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"}]


def test_service_account_token_is_mounted(render: Any) -> None:
    """Unlike the serving pods, the operator talks to the API: its token must be there."""
    docs = render()
    assert pod_spec(docs)["automountServiceAccountToken"] is True
    sa = next(d for d in docs if d["kind"] == "ServiceAccount")
    assert sa.get("automountServiceAccountToken", True) is True
    assert pod_spec(docs)["serviceAccountName"] == sa["metadata"]["name"]


def test_resources_are_bounded(render: Any) -> None:
    resources = pod_spec(render())["containers"][0]["resources"]
    assert set(resources["requests"]) == {"cpu", "memory"}
    assert set(resources["limits"]) == {"cpu", "memory"}
    custom = {"requests": {"cpu": "50m", "memory": "128Mi"}, "limits": {"cpu": "2", "memory": "1Gi"}}
    assert pod_spec(render({"resources": custom}))["containers"][0]["resources"] == custom
