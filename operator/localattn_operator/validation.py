"""Cross-field rules the CRD schema cannot express on Kubernetes 1.20 (no CEL).

Pure: takes the raw spec dict, returns the parsed spec or a list of precise, user-facing messages. The
operator reports them as the `InvalidSpec` condition and a Warning event and leaves the running version alone.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from localattn_operator.models import RESERVED_ENV, LocalAttnDeploymentSpec, parse_spec
from localattn_operator.names import is_dns_subdomain
from localattn_operator.quantity import parse_quantity
from localattn_operator.rollout_validation import rollout_problems

_HF_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")
_S3_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_GPU = "nvidia.com/gpu"
_ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")  # what the apiserver accepts for an env var name
# models.RESERVED_ENV: env the operator sets on every serving container itself; and what it sets for a model
# source with credentials (reserved only then).
SOURCE_ENV = {"hf": "HF_TOKEN", "s3": "AWS_SHARED_CREDENTIALS_FILE"}


@dataclass(frozen=True)
class ModelLocation:
    """Where the weights come from, decoded from `spec.model.uri`."""

    scheme: str  # "pvc" | "hf" | "s3" | "image"
    claim: str | None = None
    path: str = ""


class SpecError(ValueError):
    def __init__(self, problems: list[str]):
        super().__init__("; ".join(problems))
        self.problems = problems


def parse_model_uri(uri: str) -> ModelLocation:
    """Decode a model URI or raise ValueError saying what a valid one looks like."""
    if uri.startswith("pvc://"):
        claim, _, path = uri.removeprefix("pvc://").partition("/")
        if not is_dns_subdomain(claim):
            raise ValueError(f"pvc:// URI needs a valid claim name: pvc://<claim>/<path>, got {uri!r}")
        if ".." in path.split("/"):
            raise ValueError(f"pvc:// path must not contain '..', got {uri!r}")
        return ModelLocation("pvc", claim=claim, path=path.strip("/"))
    if uri.startswith("hf://"):
        repo = uri.removeprefix("hf://")
        if not _HF_ID.match(repo):
            raise ValueError(f"hf:// URI must be hf://<org>/<name> or hf://<name>, got {uri!r}")
        return ModelLocation("hf", path=repo)
    if uri.startswith("s3://"):
        bucket, _, prefix = uri.removeprefix("s3://").partition("/")
        if not _S3_BUCKET.match(bucket):
            raise ValueError(f"s3:// URI needs a valid bucket: s3://<bucket>/<prefix>, got {uri!r}")
        return ModelLocation("s3", path=f"{bucket}/{prefix}".rstrip("/"))
    if uri.startswith("/") and "://" not in uri:
        if ".." in uri.split("/"):
            raise ValueError(f"model path must not contain '..', got {uri!r}")
        return ModelLocation("image", path=uri)
    raise ValueError(
        f"unsupported model uri {uri!r}: use pvc://claim/path, hf://org/name, s3://bucket/prefix or /abs/path"
    )


def _format_pydantic(err: ValidationError) -> list[str]:
    problems = []
    for item in err.errors():
        loc = list(item["loc"])
        if item["type"] == "extra_forbidden" and loc and not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", str(loc[-1])):
            # An unknown key that is not a plain name is quoted, not joined into the path (dots, spaces, empty).
            where = ".".join(["spec", *(str(p) for p in loc[:-1])])
            problems.append(f"{where}: unknown field {str(loc[-1])!r}")
            continue
        where = "spec." + ".".join(str(p) for p in loc) if loc else "spec"
        problems.append(f"{where}: {item['msg']}")
    return problems


def _quantity_as_int(value: int | str) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def cross_field_problems(spec: LocalAttnDeploymentSpec) -> list[str]:
    problems: list[str] = []
    try:
        location = parse_model_uri(spec.model.uri)
    except ValueError as exc:
        problems.append(f"spec.model.uri: {exc}")
        location = None
    if spec.model.revision and location is not None and location.scheme != "hf":
        problems.append("spec.model.revision: only meaningful for hf:// models")

    local = spec.local_attention
    max_len = spec.runtime.max_model_len
    if max_len is not None:
        if local.window_size >= max_len:
            problems.append(
                f"spec.localAttention.windowSize ({local.window_size}) must be smaller than "
                f"spec.runtime.maxModelLen ({max_len}); otherwise every layer is global"
            )
        if local.sink_tokens + local.window_size > max_len:
            problems.append(
                f"spec.localAttention.sinkTokens + windowSize ({local.sink_tokens + local.window_size}) "
                f"exceeds spec.runtime.maxModelLen ({max_len})"
            )
        if local.min_context_length > max_len:
            problems.append(
                f"spec.localAttention.minContextLength ({local.min_context_length}) exceeds "
                f"spec.runtime.maxModelLen ({max_len}): local attention would never be used"
            )
    if local.enabled and spec.memory.kv_cache_dtype.startswith("fp8"):
        problems.append(
            f"spec.memory.kvCacheDtype ({spec.memory.kv_cache_dtype}): the local-attention kernels read an "
            "unquantized KV cache; use auto, bfloat16 or float16, or set spec.localAttention.enabled: false"
        )
    rule = local.global_layers
    if rule.indices is not None and rule.every is not None:
        problems.append("spec.localAttention.globalLayers: set either indices or every, not both")
    for i, index in enumerate(rule.indices or []):
        if index < 0:
            problems.append(f"spec.localAttention.globalLayers.indices[{i}]: layer index {index} is negative")
    if rule.indices and len(set(rule.indices)) != len(rule.indices):
        problems.append("spec.localAttention.globalLayers.indices: duplicate layer indices")

    gpus = _quantity_as_int(spec.runtime.resources.limits.get(_GPU, 0))
    if gpus is None:
        problems.append(f"spec.runtime.resources.limits[{_GPU}]: must be a whole number of GPUs")
    elif 0 < gpus < spec.runtime.tensor_parallel_size:
        problems.append(
            f"spec.runtime.tensorParallelSize ({spec.runtime.tensor_parallel_size}) needs at least as many "
            f"GPUs, but limits[{_GPU}] is {gpus}"
        )
    request = spec.runtime.resources.requests.get(_GPU)
    if request is not None and _quantity_as_int(request) != gpus:
        problems.append(f"spec.runtime.resources.requests[{_GPU}] must equal limits[{_GPU}] (GPUs can't overcommit)")
    names = [e.name for e in spec.runtime.env]
    for i, e in enumerate(spec.runtime.env):
        if (e.value is None) == (e.secret_key_ref is None):
            problems.append(f"spec.runtime.env[{i}]: set exactly one of value or secretKeyRef ({e.name})")
    if len(set(names)) != len(names):
        problems.append("spec.runtime.env: duplicate variable names")
    problems += _resource_and_env_problems(spec, location)
    problems += pod_field_problems(spec)
    problems += autoscaling_problems(spec)
    problems += rollout_problems(spec)
    return problems


def _resource_and_env_problems(spec: LocalAttnDeploymentSpec, location: ModelLocation | None) -> list[str]:
    """What the apiserver would reject only when the rendered Deployment is applied (quantities, env names)."""
    problems: list[str] = []
    parsed: dict[str, dict[str, Any]] = {}
    for kind, values in (("requests", spec.runtime.resources.requests), ("limits", spec.runtime.resources.limits)):
        for resource, value in values.items():
            try:
                quantity = parse_quantity(value)
            except ValueError as exc:
                problems.append(f"spec.runtime.resources.{kind}[{resource}]: {exc}")
                continue
            if quantity < 0:
                problems.append(f"spec.runtime.resources.{kind}[{resource}]: must not be negative, got {value!r}")
            parsed.setdefault(kind, {})[resource] = quantity
    for resource, request in parsed.get("requests", {}).items():
        limit = parsed.get("limits", {}).get(resource)
        if limit is not None and request > limit:
            problems.append(
                f"spec.runtime.resources.requests[{resource}] ({spec.runtime.resources.requests[resource]}) "
                f"must not exceed limits[{resource}] ({spec.runtime.resources.limits[resource]})"
            )
    kv = spec.memory.kv_cache_memory
    if kv is not None:
        try:
            if parse_quantity(kv) < 1:
                problems.append(f"spec.memory.kvCacheMemory: must be at least 1 byte, got {kv!r}")
        except ValueError as exc:
            problems.append(f"spec.memory.kvCacheMemory: {exc}")
    reserved = set(RESERVED_ENV)
    if location is not None and spec.model.secret_ref is not None and location.scheme in SOURCE_ENV:
        reserved.add(SOURCE_ENV[location.scheme])
    for i, e in enumerate(spec.runtime.env):
        if not _ENV_NAME.match(e.name):
            problems.append(f"spec.runtime.env[{i}].name: {e.name!r} is not a valid environment variable name")
        elif e.name in reserved:
            problems.append(
                f"spec.runtime.env[{i}].name: {e.name} is set by the operator itself "
                f"(reserved: {', '.join(sorted(reserved))})"
            )
    return problems


# The apiserver's own syntax for what the spec copies into the pod template (apimachinery's validation): found
# by tests/operator/test_spec_fuzz.py, whose accepted specs must all pass a server-side dry run.
_NAME_PART = r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
_QUALIFIED = re.compile(rf"^([a-z0-9]([-a-z0-9.]{{0,251}}[a-z0-9])?/)?{_NAME_PART}$")  # label keys, resource names
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")
_CONFIG_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")
_STANDARD_RESOURCES = {"cpu", "memory", "ephemeral-storage"}


def _qualified(key: str) -> bool:
    return bool(_QUALIFIED.match(key)) and len(key.rpartition("/")[0]) <= 253


def _key_problem(path: str, key: str) -> str | None:
    """A ConfigMap/Secret key (it also becomes a file name in the pod)."""
    if not _CONFIG_KEY.match(key) or key in (".", "..") or key.startswith(".."):
        return f"{path}: {key!r} is not a valid key (letters, digits, '-', '_', '.'; not '.' or '..')"
    return None


def _name_problem(path: str, name: str, kind: str) -> str | None:
    if not is_dns_subdomain(name):
        return f"{path}: {name!r} is not a valid {kind} name (a lowercase DNS subdomain)"
    return None


def pod_field_problems(spec: LocalAttnDeploymentSpec) -> list[str]:
    """What the spec copies into the pod template verbatim, checked with the apiserver's own rules: scheduling
    (nodeSelector, tolerations), resource names and the references to Secrets and ConfigMaps."""
    problems: list[str | None] = []
    runtime = spec.runtime
    for key, value in runtime.node_selector.items():
        if not _qualified(key):
            problems.append(f"spec.runtime.nodeSelector[{key}]: not a valid label key")
        if not _LABEL_VALUE.match(value):
            problems.append(f"spec.runtime.nodeSelector[{key}]: {value!r} is not a valid label value (at most 63 "
                            "letters, digits, '-', '_', '.', starting and ending alphanumeric)")
    for i, t in enumerate(runtime.tolerations):
        path = f"spec.runtime.tolerations[{i}]"
        if t.key and not _qualified(t.key):
            problems.append(f"{path}.key: {t.key!r} is not a valid label key")
        if not t.key and t.operator != "Exists":
            problems.append(f"{path}.operator: must be Exists when key is empty (which matches every taint)")
        if t.operator == "Exists" and t.value:
            problems.append(f"{path}.value: must be empty when operator is Exists")
        if t.value and not _LABEL_VALUE.match(t.value):
            problems.append(f"{path}.value: {t.value!r} is not a valid label value")
        if t.toleration_seconds is not None and t.effect != "NoExecute":
            problems.append(f"{path}.tolerationSeconds: only with effect NoExecute")
    resources = runtime.resources
    for kind, values in (("requests", resources.requests), ("limits", resources.limits)):
        for name, amount in values.items():
            path = f"spec.runtime.resources.{kind}[{name}]"
            standard = name in _STANDARD_RESOURCES or name.startswith("hugepages-")
            if not standard and ("/" not in name or not _qualified(name) or name.startswith("kubernetes.io/")):
                problems.append(f"{path}: not a resource name (cpu, memory, ephemeral-storage, hugepages-<size>, "
                                "or an extended resource like nvidia.com/gpu)")
                continue
            if name not in _STANDARD_RESOURCES and name != _GPU:  # extended resources and hugepages cannot be
                # overcommitted (the GPU's own rule, with its message, is in cross_field_problems)
                try:
                    whole = parse_quantity(amount) == int(parse_quantity(amount))
                    limit = parse_quantity(resources.limits[name]) if name in resources.limits else None
                except ValueError:
                    continue  # reported by _resource_and_env_problems
                if not whole and not standard:
                    problems.append(f"{path}: an extended resource takes a whole number, got {amount!r}")
                if kind == "requests" and limit is None:
                    problems.append(f"{path}: an extended resource cannot be overcommitted: set limits[{name}] equal")
                elif kind == "requests" and parse_quantity(amount) != limit:
                    problems.append(f"{path} must equal limits[{name}] (extended resources cannot be overcommitted)")
    named = {*resources.requests, *resources.limits}
    if any(n.startswith("hugepages-") for n in named) and not {"cpu", "memory"} & named:
        problems.append("spec.runtime.resources: hugepages need a cpu or memory request or limit too")
    refs = [("spec.model.secretRef", spec.model.secret_ref, "Secret")]
    refs += [(f"spec.runtime.env[{i}].secretKeyRef", e.secret_key_ref, "Secret") for i, e in enumerate(runtime.env)]
    if spec.local_attention.calibration_plan is not None:
        plan = spec.local_attention.calibration_plan
        problems.append(_name_problem("spec.localAttention.calibrationPlan.configMapName", plan.config_map_name,
                                      "ConfigMap"))
        problems.append(_key_problem("spec.localAttention.calibrationPlan.key", plan.key))
    for path, ref, kind in refs:
        if ref is not None:
            problems += [_name_problem(f"{path}.name", ref.name, kind), _key_problem(f"{path}.key", ref.key)]
    for path, cm in (("spec.probe.goldenSet", spec.probe.golden_set), ("spec.pairedComparison.prompts",
                                                                       spec.paired_comparison.prompts)):
        if cm is not None:
            problems.append(_key_problem(f"{path}.key", cm.key))  # the name: rollout_validation
    policy = spec.network_policy
    peers = [(f"spec.networkPolicy.clients[{i}]", p) for i, p in enumerate(policy.clients or [])]
    for path, peer in [*peers, ("spec.networkPolicy.prometheus", policy.prometheus)]:
        if peer.pod_selector is None and peer.namespace_selector is None:
            problems.append(f"{path}: set podSelector, namespaceSelector or both")
        for field, labels in (("podSelector", peer.pod_selector), ("namespaceSelector", peer.namespace_selector)):
            for key, value in (labels or {}).items():
                if not _qualified(key) or not _LABEL_VALUE.match(value):
                    problems.append(f"{path}.{field}[{key}]: not a valid label selector ({key}={value!r})")
    if runtime.image != runtime.image.strip():
        problems.append("spec.runtime.image: must not have leading or trailing whitespace")
    return [p for p in problems if p]


def validate_spec(raw: dict[str, Any]) -> LocalAttnDeploymentSpec:
    """Parse and check a raw spec; raise SpecError listing every problem found."""
    try:
        spec = parse_spec(raw)
    except ValidationError as exc:
        raise SpecError(_format_pydantic(exc)) from None
    problems = cross_field_problems(spec)
    if problems:
        raise SpecError(problems)
    return spec


def autoscaling_problems(spec: LocalAttnDeploymentSpec) -> list[str]:
    """`spec.autoscaling` rules the schema cannot state. `spec.replicas` outside [min, max] is not an error: with
    autoscaling set the operator owns it and clamps it on its first decision (as the HPA does)."""
    scaling = spec.autoscaling
    if scaling is None:
        return []
    problems: list[str] = []
    if scaling.min_replicas > scaling.max_replicas:
        problems.append(
            f"spec.autoscaling.minReplicas ({scaling.min_replicas}) must not exceed "
            f"spec.autoscaling.maxReplicas ({scaling.max_replicas})"
        )
    if not any(value is not None for value in scaling.targets.model_dump().values()):
        problems.append(
            "spec.autoscaling.targets: set at least one of waitingRequestsPerReplica, kvCacheUsage, "
            "p95LatencySeconds, p95TTFTSeconds"
        )
    return problems
