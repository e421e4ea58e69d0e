"""Cross-field rules the CRD schema cannot express on Kubernetes 1.20 (no CEL).

Pure: takes the raw spec dict, returns the parsed spec or a list of precise, user-facing messages. The
operator reports them as the `InvalidSpec` condition and a Warning event and leaves the running version alone.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from localattn_operator.models import LocalAttnDeploymentSpec, parse_spec
from localattn_operator.quantity import parse_quantity
from localattn_operator.rollout_validation import rollout_problems

_PVC_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
_HF_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")
_S3_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_GPU = "nvidia.com/gpu"
_ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")  # what the apiserver accepts for an env var name
# Env the operator sets on every serving container itself (render.py); a duplicate is rejected by the
# apiserver only when the Deployment is applied, so it is caught here, naming the field.
RESERVED_ENV = ("LOCALATTN_CONFIG", "HOME", "HF_HOME", "POD_IP", "POD_NAME", "POD_NAMESPACE")
# ... and what it sets for a model source with credentials.
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
        if not _PVC_NAME.match(claim):
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
        where = "spec." + ".".join(str(p) for p in item["loc"]) if item["loc"] else "spec"
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
    for e in spec.runtime.env:
        if (e.value is None) == (e.secret_key_ref is None):
            problems.append(f"spec.runtime.env[{e.name}]: set exactly one of value or secretKeyRef")
    if len(set(names)) != len(names):
        problems.append("spec.runtime.env: duplicate variable names")
    problems += _resource_and_env_problems(spec, location)
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
