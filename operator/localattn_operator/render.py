"""Pure rendering: a validated spec -> the child manifests (ConfigMap, Deployment, Service).

No I/O here. Children carry owner references (garbage collection on delete) and the revision label;
the pod template runs stock `vllm serve` with the localattn plugin configured through a mounted ConfigMap.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from localattn_operator import models
from localattn_operator.models import LocalAttnDeploymentSpec
from localattn_operator.revision import revision_of
from localattn_operator.validation import parse_model_uri

MANAGED_BY = "localattn-operator"
LABEL_NAME = "localattn.dev/deployment"
LABEL_REVISION = "localattn.dev/revision"
CONFIG_FILE = "localattn.json"
CONFIG_DIR = "/etc/localattn"
MODELS_DIR = "/models"
SCRAPE_PORT_NAME = "http"
UID = 1000


@dataclass(frozen=True)
class Owner:
    """The LocalAttnDeployment the children belong to."""

    name: str
    namespace: str
    uid: str


def selector_labels(name: str) -> dict[str, str]:
    """Labels selecting every serving pod of one LocalAttnDeployment, whatever its revision."""
    return {LABEL_NAME: name}


def selector_string(name: str) -> str:
    return ",".join(f"{k}={v}" for k, v in selector_labels(name).items())


def common_labels(name: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "localattn",
        "app.kubernetes.io/instance": name,
        "app.kubernetes.io/managed-by": MANAGED_BY,
        **selector_labels(name),
    }


def _metadata(owner: Owner, name: str, revision: str) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": owner.namespace,
        "labels": {**common_labels(owner.name), LABEL_REVISION: revision},
        "ownerReferences": [
            {
                "apiVersion": f"{models.GROUP}/{models.VERSION}",
                "kind": models.KIND,
                "name": owner.name,
                "uid": owner.uid,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ],
    }


def config_map_name(owner_name: str) -> str:
    return f"{owner_name}-runtime"


def runtime_config(spec: LocalAttnDeploymentSpec) -> dict[str, Any]:
    """The plugin's configuration file (the runtime's contract: camelCase, as in spec.localAttention)."""
    local = spec.local_attention
    rule = local.global_layers
    global_layers: dict[str, Any] = (
        {"indices": list(rule.indices)} if rule.indices is not None
        else {"every": rule.every, "offset": rule.offset} if rule.every is not None
        else {"indices": []}
    )
    return {
        "enabled": local.enabled,
        "windowSize": local.window_size,
        "sinkTokens": local.sink_tokens,
        "globalLayers": global_layers,
        "minContextLength": local.min_context_length,
    }


def render_config_map(owner: Owner, spec: LocalAttnDeploymentSpec) -> dict[str, Any]:
    revision = revision_of(spec)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(owner, config_map_name(owner.name), revision),
        "data": {CONFIG_FILE: json.dumps(runtime_config(spec), indent=2, sort_keys=True)},
    }


def _model_args_and_volumes(
    spec: LocalAttnDeploymentSpec,
) -> tuple[str, list[str], list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """(model argument, extra vllm args, volumes, volume mounts, env) for the model source."""
    location = parse_model_uri(spec.model.uri)
    args: list[str] = []
    volumes: list[dict[str, Any]] = []
    mounts: list[dict[str, Any]] = []
    env: list[dict[str, Any]] = []
    secret = spec.model.secret_ref
    if location.scheme == "pvc":
        assert location.claim is not None
        volumes.append({"name": "model", "persistentVolumeClaim": {"claimName": location.claim, "readOnly": True}})
        mounts.append({"name": "model", "mountPath": MODELS_DIR, "readOnly": True})
        model = f"{MODELS_DIR}/{location.path}".rstrip("/")
    elif location.scheme == "hf":
        model = location.path
        if spec.model.revision:
            args += ["--revision", spec.model.revision]
        if secret:
            env.append({"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": secret.name, "key": secret.key}}})
    elif location.scheme == "s3":
        model = f"s3://{location.path}"
        args += ["--load-format", "runai_streamer"]
        if secret:
            # An AWS shared-credentials file, mounted read-only; never copied into env or the spec.
            volumes.append(
                {"name": "s3-credentials", "secret": {"secretName": secret.name, "items": [{"key": secret.key, "path": "credentials"}]}}
            )
            mounts.append({"name": "s3-credentials", "mountPath": "/var/run/secrets/s3", "readOnly": True})
            env.append({"name": "AWS_SHARED_CREDENTIALS_FILE", "value": "/var/run/secrets/s3/credentials"})
    else:
        model = location.path
    return model, args, volumes, mounts, env


ATTENTION_BACKEND_FLAG = "--attention-backend"


def vllm_args(spec: LocalAttnDeploymentSpec, model: str, source_args: list[str]) -> list[str]:
    runtime, memory = spec.runtime, spec.memory
    args = [
        model,
        "--host", "0.0.0.0",
        "--port", str(runtime.port),
        "--served-model-name", spec.model.served_model_name or model,
        "--tensor-parallel-size", str(runtime.tensor_parallel_size),
        "--dtype", runtime.dtype,
        "--gpu-memory-utilization", str(memory.gpu_memory_utilization),
        "--kv-cache-dtype", memory.kv_cache_dtype,
    ]
    if runtime.max_model_len is not None:
        args += ["--max-model-len", str(runtime.max_model_len)]
    if memory.cpu_offload_gb:
        args += ["--cpu-offload-gb", str(memory.cpu_offload_gb)]
    if memory.swap_space_gb:
        args += ["--kv-offloading-size", str(memory.swap_space_gb)]
    if spec.local_attention.enabled and not any(a.split("=")[0] == ATTENTION_BACKEND_FLAG for a in runtime.extra_args):
        # On GPU vLLM only uses the plugin's backend when asked for CUSTOM; on CPU it logs that CUSTOM is not a
        # CPU backend and asks for CPU_ATTN, which the plugin has replaced. So the flag is right on both.
        args += [ATTENTION_BACKEND_FLAG, "CUSTOM"]
    return args + source_args + list(runtime.extra_args)


def _probe(path: str, port: str, period: int, failures: int) -> dict[str, Any]:
    return {"httpGet": {"path": path, "port": port}, "periodSeconds": period, "failureThreshold": failures, "timeoutSeconds": 5}


def render_pod_template(owner: Owner, spec: LocalAttnDeploymentSpec, revision: str) -> dict[str, Any]:
    runtime = spec.runtime
    model, source_args, volumes, mounts, env = _model_args_and_volumes(spec)
    env = [
        {"name": "LOCALATTN_CONFIG", "value": f"{CONFIG_DIR}/{CONFIG_FILE}"},
        {"name": "HOME", "value": "/tmp"},
        {"name": "HF_HOME", "value": "/tmp/hf"},
        *env,
        *(
            {"name": e.name, "value": e.value} if e.secret_key_ref is None
            else {"name": e.name, "valueFrom": {"secretKeyRef": {"name": e.secret_key_ref.name, "key": e.secret_key_ref.key}}}
            for e in runtime.env
        ),
    ]
    volumes = [
        {"name": "runtime-config", "configMap": {"name": config_map_name(owner.name)}},
        {"name": "tmp", "emptyDir": {}},
        {"name": "dshm", "emptyDir": {"medium": "Memory"}},
        *volumes,
    ]
    mounts = [
        {"name": "runtime-config", "mountPath": CONFIG_DIR, "readOnly": True},
        {"name": "tmp", "mountPath": "/tmp"},
        {"name": "dshm", "mountPath": "/dev/shm"},
        *mounts,
    ]
    resources = {
        key: {k: str(v) for k, v in value.items()}
        for key, value in (("requests", runtime.resources.requests), ("limits", runtime.resources.limits))
        if value
    }
    container = {
        "name": "vllm",
        "image": runtime.image,
        "command": ["vllm", "serve"],
        "args": vllm_args(spec, model, source_args),
        "env": env,
        "ports": [{"name": SCRAPE_PORT_NAME, "containerPort": runtime.port, "protocol": "TCP"}],
        "resources": resources,
        "volumeMounts": mounts,
        # Model loading can take many minutes; liveness only starts once startup succeeded.
        "startupProbe": _probe("/health", SCRAPE_PORT_NAME, 10, 180),
        "readinessProbe": _probe("/health", SCRAPE_PORT_NAME, 5, 3),
        "livenessProbe": _probe("/health", SCRAPE_PORT_NAME, 15, 4),
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": UID,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    pod_spec: dict[str, Any] = {
        "containers": [container],
        "volumes": volumes,
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": 30,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": UID,
            "runAsGroup": UID,
            "fsGroup": UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    }
    if runtime.node_selector:
        pod_spec["nodeSelector"] = dict(runtime.node_selector)
    if runtime.tolerations:
        pod_spec["tolerations"] = [t.model_dump(by_alias=True, exclude_none=True) for t in runtime.tolerations]
    return {
        "metadata": {
            "labels": {**common_labels(owner.name), LABEL_REVISION: revision},
            "annotations": {
                "prometheus.io/scrape": "true",
                "prometheus.io/port": str(runtime.port),
                "prometheus.io/path": "/metrics",
            },
        },
        "spec": pod_spec,
    }


def render_deployment(owner: Owner, spec: LocalAttnDeploymentSpec) -> dict[str, Any]:
    revision = revision_of(spec)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(owner, owner.name, revision),
        "spec": {
            "replicas": spec.replicas,
            "selector": {"matchLabels": selector_labels(owner.name)},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "revisionHistoryLimit": 3,
            "template": render_pod_template(owner, spec, revision),
        },
    }


def render_service(owner: Owner, spec: LocalAttnDeploymentSpec) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(owner, owner.name, revision_of(spec)),
        "spec": {
            "type": "ClusterIP",
            "selector": selector_labels(owner.name),
            "ports": [{"name": SCRAPE_PORT_NAME, "port": spec.runtime.port, "targetPort": SCRAPE_PORT_NAME, "protocol": "TCP"}],
        },
    }


def render_children(owner: Owner, spec: LocalAttnDeploymentSpec) -> list[dict[str, Any]]:
    """All children, in apply order (the ConfigMap first: the pods mount it)."""
    return [render_config_map(owner, spec), render_deployment(owner, spec), render_service(owner, spec)]
