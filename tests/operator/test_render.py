"""Rendering: the pod template runs vllm serve with the plugin configured, securely, with probes."""

import json
from typing import Any

import pytest

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
    assert volumes["runtime-config"]["configMap"]["name"] == f"llama-runtime-{revision_of(validate_spec(RAW))}"
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
        "probe": {"enabled": False, "intervalSeconds": 60, "maxTokens": 16},
    }  # every variant is fed to the plugin's parser in tests/runtime/test_contract.py


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


def test_vllm_listens_on_the_pod_ip_from_the_downward_api() -> None:
    """`--host $(POD_IP)`: kubelet expands it from the container's env, which the downward API fills."""
    dep = children(RAW)["Deployment"]
    container = dep["spec"]["template"]["spec"]["containers"][0]
    args = container["args"]
    assert args[args.index("--host") + 1] == "$(POD_IP)"
    env = {e["name"]: e for e in container["env"]}
    for name, path in (("POD_IP", "status.podIP"), ("POD_NAME", "metadata.name"), ("POD_NAMESPACE", "metadata.namespace")):
        assert env[name] == {"name": name, "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": path}}}
    # the variable is defined before any user variable (kubelet expands only variables defined earlier)
    names = [e["name"] for e in container["env"]]
    assert names.index("POD_IP") < names.index("A")
    # the probes target the named port; kubelet sends them to the pod IP, where vLLM now listens
    assert {container[p]["httpGet"]["port"] for p in ("startupProbe", "readinessProbe", "livenessProbe")} == {"http"}
    assert dep["spec"]["progressDeadlineSeconds"] == 600


@pytest.mark.parametrize(("quantity", "expected"), [("512Mi", 512 * 2**20), ("1.5Gi", 3 * 2**29), ("2G", 2 * 10**9),
                                                    (1048576, 1048576)])
def test_kv_cache_memory_becomes_bytes(quantity: int | str, expected: int) -> None:
    raw = {**RAW, "memory": {**RAW["memory"], "kvCacheMemory": quantity}}
    args = children(raw)["Deployment"]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--kv-cache-memory-bytes") + 1] == str(expected)


def test_no_kv_cache_flag_without_kv_cache_memory() -> None:
    assert "--kv-cache-memory-bytes" not in children(RAW)["Deployment"]["spec"]["template"]["spec"]["containers"][0]["args"]


@pytest.mark.parametrize("uri", ["hf://org/m", "s3://bucket/prefix", "pvc://models/m"])
def test_every_env_the_operator_sets_is_reserved(uri: str) -> None:
    """validation.RESERVED_ENV/SOURCE_ENV must list every name the renderer sets, or a user's duplicate would
    only be refused by the apiserver when the Deployment is applied."""
    from localattn_operator.validation import RESERVED_ENV, SOURCE_ENV

    raw = {"model": {"uri": uri, "secretRef": {"name": "s", "key": "k"}}}
    container = children(raw)["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    assert {e["name"] for e in container["env"]} <= set(RESERVED_ENV) | set(SOURCE_ENV.values())


def test_each_arm_selects_its_own_track_and_the_service_selects_both() -> None:
    from localattn_operator.render import definition_of, render_arm, render_config_map

    definition = definition_of(validate_spec(RAW))
    stable, canary = (render_arm(OWNER, definition, track, 2) for track in ("stable", "canary"))
    assert (stable["metadata"]["name"], canary["metadata"]["name"]) == ("llama-stable", "llama-canary")
    for dep, track in ((stable, "stable"), (canary, "canary")):
        assert dep["spec"]["selector"]["matchLabels"] == {"localattn.dev/deployment": "llama", "localattn.dev/track": track}
        labels = dep["spec"]["template"]["metadata"]["labels"]
        assert labels["localattn.dev/track"] == track and labels["localattn.dev/revision"] == definition.revision
        assert set(dep["spec"]["selector"]["matchLabels"].items()) <= set(labels.items())
    cm = render_config_map(OWNER, definition)
    assert cm["metadata"]["name"] == f"llama-runtime-{definition.revision}" and cm["immutable"] is True
    assert children(RAW)["Service"]["spec"]["selector"] == {"localattn.dev/deployment": "llama"}


def test_an_arms_inference_pool_selects_that_arms_pods_on_the_serving_port() -> None:
    """backendKind InferencePool: the pool is the route's backendRef, so it must select exactly the arm's pods
    (the Inference Extension v1 schema: selector.matchLabels, targetPorts, endpointPickerRef)."""
    from localattn_operator.models import EndpointPickerRef
    from localattn_operator.render import arm_inference_pool, definition_of, render_arm

    definition = definition_of(validate_spec(RAW))
    pool = arm_inference_pool(OWNER, definition, "canary", EndpointPickerRef(name="epp", port=9002))
    arm = render_arm(OWNER, definition, "canary", 1)
    assert (pool["apiVersion"], pool["kind"], pool["metadata"]["name"]) == (
        "inference.networking.k8s.io/v1", "InferencePool", "llama-canary")
    assert pool["spec"]["selector"]["matchLabels"] == arm["spec"]["selector"]["matchLabels"]
    port = arm["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"]
    assert pool["spec"]["targetPorts"] == [{"number": port}]
    assert pool["spec"]["endpointPickerRef"] == {"name": "epp", "port": {"number": 9002}, "failureMode": "FailClose"}
    assert pool["metadata"]["ownerReferences"][0]["uid"] == OWNER.uid
