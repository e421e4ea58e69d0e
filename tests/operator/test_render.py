"""Rendering: the pod template runs vllm serve with the plugin configured, securely, with probes."""

import json
from typing import Any

from localattn_operator.render import Owner, render_children
from localattn_operator.revision import revision_of
from localattn_operator.validation import validate_spec

OWNER = Owner(name="llama", namespace="serving", uid="1234-uid")


def children(raw: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["kind"]: c for c in render_children(OWNER, validate_spec(raw))}


RAW: dict[str, Any] = {
    "model": {"uri": "pvc://models/llama/v1", "servedModelName": "llama"},
    "runtime": {
        "maxModelLen": 8192,
        "tensorParallelSize": 2,
        "extraArgs": ["--enable-chunked-prefill"],
        "resources": {"limits": {"nvidia.com/gpu": 2}},
        "nodeSelector": {"gpu": "h100"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "env": [{"name": "A", "value": "1"}, {"name": "TOKEN", "secretKeyRef": {"name": "s", "key": "k"}}],
    },
    "localAttention": {"windowSize": 512, "sinkTokens": 4, "globalLayers": {"every": 4, "offset": 1}},
    "memory": {"kvCacheDtype": "bfloat16", "cpuOffloadGB": 4, "swapSpaceGB": 8},
    "replicas": 3,
}


def test_children_are_owned_and_labelled() -> None:
    rendered = children(RAW)
    revision = revision_of(validate_spec(RAW))
    assert set(rendered) == {"ConfigMap", "Deployment", "Service"}
    for child in rendered.values():
        ref = child["metadata"]["ownerReferences"][0]
        assert ref["uid"] == "1234-uid" and ref["controller"] is True and ref["kind"] == "LocalAttnDeployment"
        assert child["metadata"]["labels"]["localattn.dev/revision"] == revision
        assert child["metadata"]["namespace"] == "serving"


def test_pod_template() -> None:
    dep = children(RAW)["Deployment"]
    assert dep["spec"]["replicas"] == 3
    pod = dep["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"] == ["vllm", "serve"]
    args = container["args"]
    assert args[0] == "/models/llama/v1"
    for flag, value in [
        ("--tensor-parallel-size", "2"), ("--max-model-len", "8192"), ("--kv-cache-dtype", "bfloat16"), ("--attention-backend", "CUSTOM"),
        ("--cpu-offload-gb", "4.0"), ("--kv-offloading-size", "8.0"), ("--served-model-name", "llama"),
    ]:
        assert args[args.index(flag) + 1] == value
    assert args[-1] == "--enable-chunked-prefill"
    assert container["resources"]["limits"] == {"nvidia.com/gpu": "2"}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/health", "port": "http"}
    assert container["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]
    sec = container["securityContext"]
    assert sec["runAsNonRoot"] and not sec["allowPrivilegeEscalation"] and sec["capabilities"] == {"drop": ["ALL"]}
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["automountServiceAccountToken"] is False
    assert pod["nodeSelector"] == {"gpu": "h100"}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["model"]["persistentVolumeClaim"] == {"claimName": "models", "readOnly": True}
    assert volumes["runtime-config"]["configMap"]["name"] == "llama-runtime"
    env = {e["name"]: e for e in container["env"]}
    assert env["LOCALATTN_CONFIG"]["value"] == "/etc/localattn/localattn.json"
    assert env["TOKEN"]["valueFrom"] == {"secretKeyRef": {"name": "s", "key": "k"}}
    assert env["A"]["value"] == "1"


def test_runtime_config_follows_the_contract() -> None:
    cm = children(RAW)["ConfigMap"]
    config = json.loads(cm["data"]["localattn.json"])
    assert config == {
        "enabled": True, "windowSize": 512, "sinkTokens": 4,
        "globalLayers": {"every": 4, "offset": 1}, "minContextLength": 0,
    }


def test_service_selects_all_revisions() -> None:
    svc = children(RAW)["Service"]
    assert svc["spec"]["selector"] == {"localattn.dev/deployment": "llama"}
    assert svc["spec"]["ports"][0]["targetPort"] == "http"


def test_hf_model_token_by_reference_only() -> None:
    raw = {"model": {"uri": "hf://org/m", "revision": "abc", "secretRef": {"name": "hf", "key": "token"}}}
    container = children(raw)["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    assert container["args"][0] == "org/m"
    assert container["args"][container["args"].index("--revision") + 1] == "abc"
    env = {e["name"]: e for e in container["env"]}
    assert env["HF_TOKEN"] == {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}}}
    assert "value" not in env["HF_TOKEN"]


def test_s3_uses_streamer_and_mounted_credentials() -> None:
    raw = {"model": {"uri": "s3://bucket/prefix", "secretRef": {"name": "aws", "key": "credentials"}}}
    pod = children(raw)["Deployment"]["spec"]["template"]["spec"]
    args = pod["containers"][0]["args"]
    assert args[0] == "s3://bucket/prefix" and "runai_streamer" in args
    assert any(v.get("secret", {}).get("secretName") == "aws" for v in pod["volumes"])


def test_attention_backend_flag_follows_local_attention() -> None:
    """GPU vLLM runs the plugin's attention only with `--attention-backend CUSTOM`; a user's own choice wins."""

    def args(raw: dict[str, Any]) -> list[str]:
        return list(children(raw)["Deployment"]["spec"]["template"]["spec"]["containers"][0]["args"])

    assert args(RAW).count("--attention-backend") == 1
    disabled = {**RAW, "localAttention": {"enabled": False}}
    assert "--attention-backend" not in args(disabled)
    own = {**RAW, "runtime": {**RAW["runtime"], "extraArgs": ["--attention-backend=FLASH_ATTN"]}}
    rendered = args(own)
    assert "--attention-backend" not in rendered and rendered[-1] == "--attention-backend=FLASH_ATTN"
