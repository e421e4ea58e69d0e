"""Pure rendering: a validated spec -> a revision's definition -> the child manifests.

No I/O here. A spec renders to a `RevisionDefinition`: the pod template *without* the LAD's identity (no name,
revision or track labels, no ConfigMap name) plus the runtime ConfigMap's data. Its hash is the revision id
(what runs, not what the spec says: a renderer change is a new revision, a new defaulted API field that renders
the same is not). The definition is what the cluster keeps as the revision record (revision.py), and every
arm is rendered from a definition: the stable arm from its record, never from the spec, which mid-rollout or
when invalid describes something else.

Children carry owner references (garbage collection on delete) and the revision label; each arm is its own
Deployment (`NAME-stable`, `NAME-canary`) with the track in its selector; each revision has its own immutable
runtime ConfigMap (`NAME-runtime-REV`), so a canary's settings never reach a stable pod that restarts.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass
from typing import Any, Literal

import localattn_contract as contract
from localattn_operator import models
from localattn_operator.models import EndpointPickerRef, LocalAttnDeploymentSpec
from localattn_operator.quantity import quantity_to_bytes
from localattn_operator.validation import parse_model_uri
from localattn_operator.weights import deployment_strategy

MANAGED_BY = "localattn-operator"
LABEL_NAME = "localattn.dev/deployment"
LABEL_REVISION = "localattn.dev/revision"
LABEL_TRACK = "localattn.dev/track"
Track = Literal["stable", "canary"]
TRACKS: tuple[Track, ...] = ("stable", "canary")
CONFIG_FILE = contract.CONFIG_FILE
CONFIG_DIR = "/etc/localattn"
# ConfigMaps the LAD names (calibration plan, golden set) are mounted apart from the runtime config's directory.
PLAN_DIR = "/etc/localattn-plan"
GOLDEN_DIR = "/etc/localattn-golden"
MODELS_DIR = "/models"
RUNTIME_VOLUME = "runtime-config"
SCRAPE_PORT_NAME = "http"
UID = 65532  # a high non-root UID; the runtime images (Dockerfile.runtime-*) run as the same user
# How long the deployment controller waits for a rollout to progress before it reports
# ProgressDeadlineExceeded (which the status then reports as Degraded), when the spec cannot say (invalid):
# the default of spec.rollout.progressDeadlineSeconds. Model loading is slow: 10 minutes.
PROGRESS_DEADLINE_SECONDS = 600
INFERENCE_POOL_API_VERSION = "inference.networking.k8s.io/v1"  # the Inference Extension's GA API (v1.0)
# The downward API env of the serving container (validation.RESERVED_ENV lists every name the operator sets, so
# a spec cannot set one twice). POD_IP feeds `--host $(POD_IP)`: vLLM listens on the pod's own address only,
# where the probes and the Service reach it (kubelet expands $(VAR) in args from the container's env).
DOWNWARD_API_ENV = {"POD_IP": "status.podIP", "POD_NAME": "metadata.name", "POD_NAMESPACE": "metadata.namespace"}


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


def config_map_name(owner_name: str, revision: str) -> str:
    """One immutable runtime ConfigMap per revision (a shared mutable one would leak a canary's settings)."""
    return f"{owner_name}-runtime-{revision}"


def legacy_config_map_name(owner_name: str) -> str:
    """The one mutable ConfigMap of operators before per-revision ones (pruned once nothing mounts it)."""
    return f"{owner_name}-runtime"


def arm_name(owner_name: str, track: Track) -> str:
    """Readable in `kubectl get deploy`: NAME-stable, NAME-canary."""
    return f"{owner_name}-{track}"


@dataclass(frozen=True)
class RevisionDefinition:
    """What runs for one revision: the identity-free pod template and the runtime ConfigMap's data."""

    revision: str
    pod_template: dict[str, Any]
    runtime_data: dict[str, str]


def revision_hash(pod_template: dict[str, Any], runtime_data: dict[str, str]) -> str:
    """A stable hash of canonical JSON (sorted keys) of both; 10 hex digits, as before."""
    canonical = json.dumps({"podTemplate": pod_template, "runtimeConfig": runtime_data},
                           sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:10]


def runtime_config(spec: LocalAttnDeploymentSpec) -> dict[str, Any]:
    """The plugin's configuration file, in the contract's schema (`localattn_contract`, the one definition the
    plugin parses too; tests/runtime/test_contract.py feeds every variant rendered here to the plugin's parser)."""
    local = spec.local_attention
    rule = local.global_layers
    global_layers: dict[str, Any] = (
        {"indices": list(rule.indices)} if rule.indices is not None
        else {"every": rule.every, "offset": rule.offset} if rule.every is not None
        else {"indices": []}
    )
    probe = spec.probe
    rendered_probe: dict[str, Any] = {
        "enabled": probe.enabled, "intervalSeconds": probe.interval_seconds, "maxTokens": probe.max_tokens}
    if probe.golden_set is not None:
        rendered_probe["goldenSetFile"] = f"{GOLDEN_DIR}/{probe.golden_set.key}"
    out: dict[str, Any] = {
        "enabled": local.enabled,
        "windowSize": local.window_size,
        "sinkTokens": local.sink_tokens,
        "globalLayers": global_layers,
        "minContextLength": local.min_context_length,
        "probe": rendered_probe,
    }
    if local.calibration_plan is not None:
        out["planFile"] = f"{PLAN_DIR}/{local.calibration_plan.key}"
    if spec.analysis.length_buckets:  # the runtime's latency histogram then has the buckets the analysis queries
        out["lengthBuckets"] = list(spec.analysis.length_buckets)
    return out


def _named_config_maps(spec: LocalAttnDeploymentSpec) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Volumes and mounts for the ConfigMaps runtime_config's files live in (calibration plan, golden set)."""
    refs: list[tuple[str, str, str, str]] = []  # (volume name, ConfigMap, key, mount path)
    if (plan := spec.local_attention.calibration_plan) is not None:
        refs.append(("calibration-plan", plan.config_map_name, plan.key, PLAN_DIR))
    if (golden := spec.probe.golden_set) is not None:
        refs.append(("golden-set", golden.name, golden.key, GOLDEN_DIR))
    volumes = [{"name": name, "configMap": {"name": cm, "items": [{"key": key, "path": key}]}}
               for name, cm, key, _ in refs]
    mounts = [{"name": name, "mountPath": path, "readOnly": True} for name, _, _, path in refs]
    return volumes, mounts


def runtime_data(spec: LocalAttnDeploymentSpec) -> dict[str, str]:
    return {CONFIG_FILE: json.dumps(runtime_config(spec), indent=2, sort_keys=True)}


def render_config_map(owner: Owner, definition: RevisionDefinition) -> dict[str, Any]:
    """The revision's runtime ConfigMap; immutable (served by 1.20: beta and on by default since 1.19)."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(owner, config_map_name(owner.name, definition.revision), definition.revision),
        "data": dict(definition.runtime_data),
        "immutable": True,
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
        "--host", "$(POD_IP)",
        "--port", str(runtime.port),
        "--served-model-name", spec.model.served_model_name or model,
        "--tensor-parallel-size", str(runtime.tensor_parallel_size),
        "--dtype", runtime.dtype,
        "--gpu-memory-utilization", str(memory.gpu_memory_utilization),
        "--kv-cache-dtype", memory.kv_cache_dtype,
    ]
    if runtime.max_model_len is not None:
        args += ["--max-model-len", str(runtime.max_model_len)]
    if memory.kv_cache_memory is not None:
        args += ["--kv-cache-memory-bytes", str(quantity_to_bytes(memory.kv_cache_memory))]
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


def _neutral_pod_template(spec: LocalAttnDeploymentSpec) -> dict[str, Any]:
    """The pod template without the LAD's identity: no labels, and the runtime ConfigMap volume unnamed
    (`render_pod_template` fills in both for one owner, revision and track)."""
    runtime = spec.runtime
    model, source_args, volumes, mounts, env = _model_args_and_volumes(spec)
    env = [
        {"name": "LOCALATTN_CONFIG", "value": f"{CONFIG_DIR}/{CONFIG_FILE}"},
        {"name": "HOME", "value": "/tmp"},
        {"name": "HF_HOME", "value": "/tmp/hf"},
        *({"name": name, "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": path}}}
          for name, path in DOWNWARD_API_ENV.items()),
        *env,
        *(
            {"name": e.name, "value": e.value} if e.secret_key_ref is None
            else {"name": e.name, "valueFrom": {"secretKeyRef": {"name": e.secret_key_ref.name, "key": e.secret_key_ref.key}}}
            for e in runtime.env
        ),
    ]
    cm_volumes, cm_mounts = _named_config_maps(spec)
    volumes = [
        {"name": RUNTIME_VOLUME, "configMap": {"name": ""}},
        {"name": "tmp", "emptyDir": {}},
        {"name": "dshm", "emptyDir": {"medium": "Memory"}},
        *cm_volumes,
        *volumes,
    ]
    mounts = [
        {"name": RUNTIME_VOLUME, "mountPath": CONFIG_DIR, "readOnly": True},
        {"name": "tmp", "mountPath": "/tmp"},
        {"name": "dshm", "mountPath": "/dev/shm"},
        *cm_mounts,
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
        # Probed every 2 s: a pod is Ready within ~2 s of vLLM answering (every 10 s added up to 10 s to each
        # start, and so to every rollout step); 900 failures keep the 30 min allowance for slow model loads.
        "startupProbe": _probe("/health", SCRAPE_PORT_NAME, 2, 900),
        "readinessProbe": _probe("/health", SCRAPE_PORT_NAME, 2, 8),
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
            "annotations": {
                "prometheus.io/scrape": "true",
                "prometheus.io/port": str(runtime.port),
                "prometheus.io/path": "/metrics",
            },
        },
        "spec": pod_spec,
    }


def definition_of(spec: LocalAttnDeploymentSpec) -> RevisionDefinition:
    """The spec's revision: what its pods would run, and its id."""
    template, data = _neutral_pod_template(spec), runtime_data(spec)
    return RevisionDefinition(revision_hash(template, data), template, data)


def render_pod_template(owner: Owner, spec: LocalAttnDeploymentSpec, revision: str) -> dict[str, Any]:
    """The spec's pod template labelled as `revision` on the stable track (for tools that render one pod)."""
    definition = definition_of(spec)
    return arm_pod_template(owner, RevisionDefinition(revision, definition.pod_template, definition.runtime_data),
                            "stable")


def arm_pod_template(owner: Owner, definition: RevisionDefinition, track: Track) -> dict[str, Any]:
    """The definition's pod template for one owner and arm: identity labels, its own runtime ConfigMap."""
    template = copy.deepcopy(definition.pod_template)
    template.setdefault("metadata", {})["labels"] = pod_labels(owner.name, definition.revision, track)
    for volume in template["spec"].get("volumes", []):
        if volume.get("name") == RUNTIME_VOLUME:
            volume["configMap"]["name"] = config_map_name(owner.name, definition.revision)
    return template


def arm_selector(owner_name: str, track: Track) -> dict[str, str]:
    """An arm's Deployment selects its own track only (the LAD-wide selector would also match the other arm)."""
    return {**selector_labels(owner_name), LABEL_TRACK: track}


def pod_labels(owner_name: str, revision: str, track: Track) -> dict[str, str]:
    return {**common_labels(owner_name), LABEL_REVISION: revision, LABEL_TRACK: track}


def render_arm(owner: Owner, definition: RevisionDefinition, track: Track, replicas: int, surge: int = 1,
               progress_deadline: int = PROGRESS_DEADLINE_SECONDS) -> dict[str, Any]:
    """One arm's Deployment (`replicas` 0 is kept, not deleted: the arm exists while the rollout needs it).
    `progress_deadline` is the LAD's `spec.rollout.progressDeadlineSeconds`: an arm never available that long
    gets the deployment controller's ProgressDeadlineExceeded, which the status reports as Degraded."""
    metadata = _metadata(owner, arm_name(owner.name, track), definition.revision)
    metadata["labels"][LABEL_TRACK] = track
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata,
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": arm_selector(owner.name, track)},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": deployment_strategy(surge)},
            "progressDeadlineSeconds": progress_deadline,
            "revisionHistoryLimit": 3,
            "template": arm_pod_template(owner, definition, track),
        },
    }


def _service(owner: Owner, port: int, revision: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(owner, owner.name, revision),
        "spec": {
            "type": "ClusterIP",
            "selector": selector_labels(owner.name),
            "ports": [{"name": SCRAPE_PORT_NAME, "port": port, "targetPort": SCRAPE_PORT_NAME, "protocol": "TCP"}],
        },
    }


def service_for(owner: Owner, stable: RevisionDefinition) -> dict[str, Any]:
    """The one Service of the LAD, from the stable revision's record (its port), labelled with that revision.
    It selects both tracks: with the `replicas` router the traffic share is the share of ready pods."""
    port = int(stable.pod_template["spec"]["containers"][0]["ports"][0]["containerPort"])
    return _service(owner, port, stable.revision)


def arm_service(owner: Owner, stable: RevisionDefinition, track: Track) -> dict[str, Any]:
    """One arm's own Service (`NAME-stable`, `NAME-canary`): the backendRefs of the gatewayAPI router's HTTPRoute."""
    service = service_for(owner, stable)
    service["metadata"]["name"] = arm_name(owner.name, track)
    service["metadata"]["labels"][LABEL_TRACK] = track
    service["spec"]["selector"] = arm_selector(owner.name, track)
    return service


def arm_inference_pool(owner: Owner, stable: RevisionDefinition, track: Track,
                       picker: EndpointPickerRef) -> dict[str, Any]:
    """One arm's InferencePool (Gateway API Inference Extension v1), the gatewayAPI router's backendRef when
    `backendKind: InferencePool`: the arm's pods on the serving port, scheduled by the user's Endpoint Picker."""
    port = int(stable.pod_template["spec"]["containers"][0]["ports"][0]["containerPort"])
    metadata = _metadata(owner, arm_name(owner.name, track), stable.revision)
    metadata["labels"][LABEL_TRACK] = track
    return {
        "apiVersion": INFERENCE_POOL_API_VERSION,
        "kind": "InferencePool",
        "metadata": metadata,
        "spec": {
            "selector": {"matchLabels": arm_selector(owner.name, track)},
            "targetPorts": [{"number": port}],
            "endpointPickerRef": {"name": picker.name, "port": {"number": picker.port},
                                  "failureMode": picker.failure_mode},
        },
    }


def network_policy_name(owner_name: str) -> str:
    return f"{owner_name}-serving"


def default_clients(owner_name: str) -> list[dict[str, Any]]:
    """Without `spec.networkPolicy.clients`: pods that say they are this LAD's clients, here or in a namespace
    that says so. The name is the label's *value* (a key `client-of-<name>` would overflow 63 characters for
    long LAD names); a namespace serving several LADs is listed in `clients` instead."""
    label = {"localattn.dev/client-of": owner_name}
    return [{"podSelector": {"matchLabels": label}}, {"namespaceSelector": {"matchLabels": dict(label)}}]


def _peer(peer: models.NetworkPolicyPeer) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if peer.namespace_selector is not None:
        out["namespaceSelector"] = {"matchLabels": dict(peer.namespace_selector)}
    if peer.pod_selector is not None:
        out["podSelector"] = {"matchLabels": dict(peer.pod_selector)}
    return out


def render_network_policy(owner: Owner, spec: LocalAttnDeploymentSpec) -> dict[str, Any] | None:
    """The LAD's NetworkPolicy, or None when `spec.networkPolicy` is off. It selects the serving pods by the LAD
    label (every revision, both tracks) and opens the *named* vLLM port, so arms whose revisions listen on
    different port numbers are both covered; it is not part of any revision (a policy change rolls nothing)."""
    policy = spec.network_policy
    if not policy.enabled:
        return None
    clients = [_peer(p) for p in policy.clients] if policy.clients is not None else default_clients(owner.name)
    metadata = _metadata(owner, network_policy_name(owner.name), "")
    metadata["labels"].pop(LABEL_REVISION)
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": metadata,
        "spec": {
            "podSelector": {"matchLabels": selector_labels(owner.name)},
            "policyTypes": ["Ingress"],
            "ingress": [{"from": [*clients, _peer(policy.prometheus)],
                         "ports": [{"protocol": "TCP", "port": SCRAPE_PORT_NAME}]}],
        },
    }


def render_service(owner: Owner, spec: LocalAttnDeploymentSpec, revision: str | None = None) -> dict[str, Any]:
    return _service(owner, spec.runtime.port, revision or definition_of(spec).revision)


def render_deployment(owner: Owner, spec: LocalAttnDeploymentSpec) -> dict[str, Any]:
    """The spec's revision as the stable arm, at spec.replicas (tools and tests that render one LAD)."""
    return render_arm(owner, definition_of(spec), "stable", spec.replicas)


def render_children(owner: Owner, spec: LocalAttnDeploymentSpec) -> list[dict[str, Any]]:
    """The spec's revision as the only arm, in apply order (the ConfigMap first: the pods mount it)."""
    definition = definition_of(spec)
    return [render_config_map(owner, definition), render_arm(owner, definition, "stable", spec.replicas),
            render_service(owner, spec, definition.revision)]
