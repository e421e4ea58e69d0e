"""The LocalAttnDeployment API: pydantic models are the single source of the CRD schema.

`crds/localattndeployment.yaml` is generated from these classes (`localattn crd generate`); what the
OpenAPI schema can express (types, ranges, enums, required fields) lives here as field constraints, and
cross-field rules live in `validation.py`, because Kubernetes 1.20 has no CEL to check them server-side.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

GROUP = "localattn.dev"
VERSION = "v1alpha1"
KIND = "LocalAttnDeployment"
PLURAL = "localattndeployments"
SINGULAR = "localattndeployment"
SHORT_NAMES = ["lad"]

# A Kubernetes quantity: "1", 1, "500m", "16Gi". The CRD marks it int-or-string.
Quantity = Annotated[int | str, Field(json_schema_extra={"x-kubernetes-int-or-string": True})]


class ApiModel(BaseModel):
    """Base: camelCase on the wire, snake_case in Python, unknown fields rejected by the schema too."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class SecretKeyRef(ApiModel):
    """A reference to one key of a Secret in the same namespace; values never appear in the spec."""

    name: str = Field(min_length=1, max_length=253)
    key: str = Field(min_length=1, max_length=253)


class ModelSource(ApiModel):
    uri: str = Field(
        min_length=1,
        description="pvc://claim/path, hf://org/name, s3://bucket/prefix, or an absolute path inside the image.",
    )
    served_model_name: str | None = Field(default=None, min_length=1, max_length=253)
    revision: str | None = Field(default=None, min_length=1, description="Model revision (hf:// only).")
    secret_ref: SecretKeyRef | None = Field(
        default=None, description="Token for hf:// (HF_TOKEN) or credentials file for s3://."
    )


def _one_gpu() -> dict[str, int | str]:
    return {"nvidia.com/gpu": 1}


class ResourceRequirements(ApiModel):
    requests: dict[str, Quantity] = Field(default_factory=dict)
    limits: dict[str, Quantity] = Field(default_factory=_one_gpu)


class Toleration(ApiModel):
    key: str | None = None
    operator: Literal["Exists", "Equal"] | None = None
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = None


class EnvVar(ApiModel):
    """A plain value or a secret reference; secrets are passed by reference only."""

    name: str = Field(min_length=1)
    value: str | None = None
    secret_key_ref: SecretKeyRef | None = None


class RuntimeSpec(ApiModel):
    image: str = Field(default="localattn/vllm-runtime:0.1.0", min_length=1)
    extra_args: list[str] = Field(default_factory=list, description="Appended to `vllm serve`.")
    tensor_parallel_size: int = Field(default=1, ge=1, le=64)
    max_model_len: int | None = Field(default=None, ge=16)
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    port: int = Field(default=8000, ge=1024, le=65535)
    resources: ResourceRequirements = Field(default_factory=ResourceRequirements)
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[Toleration] = Field(default_factory=list)
    env: list[EnvVar] = Field(default_factory=list)


class GlobalLayers(ApiModel):
    """Layers that keep full attention: explicit `indices`, or every `every`-th layer from `offset`."""

    indices: list[int] | None = None
    every: int | None = Field(default=None, ge=1)
    offset: int = Field(default=0, ge=0)


class LocalAttentionSpec(ApiModel):
    enabled: bool = True
    window_size: int = Field(default=1024, ge=1, description="W: each query sees the last W tokens.")
    sink_tokens: int = Field(default=4, ge=0, le=4096, description="S: the first S tokens stay visible.")
    global_layers: GlobalLayers = Field(default_factory=GlobalLayers)
    min_context_length: int = Field(
        default=0, ge=0, description="Sequences shorter than this use full attention in every layer."
    )


class MemorySpec(ApiModel):
    gpu_memory_utilization: float = Field(default=0.9, gt=0, le=1)
    kv_cache_dtype: Literal["auto", "bfloat16", "float16", "fp8", "fp8_e4m3", "fp8_e5m2"] = "auto"
    cpu_offload_gb: float = Field(default=0, ge=0, alias="cpuOffloadGB")
    swap_space_gb: float = Field(
        default=0, ge=0, alias="swapSpaceGB", description="CPU KV offloading buffer (vLLM >= 0.11: --kv-offloading-size)."
    )


class LocalAttnDeploymentSpec(ApiModel):
    model: ModelSource
    runtime: RuntimeSpec = Field(default_factory=RuntimeSpec)
    local_attention: LocalAttentionSpec = Field(default_factory=LocalAttentionSpec)
    memory: MemorySpec = Field(default_factory=MemorySpec)
    replicas: int = Field(default=1, ge=0, le=1000)


Phase = Literal["Pending", "Progressing", "Ready", "Degraded", "InvalidSpec"]
ConditionType = Literal["Ready", "Progressing", "Degraded", "InvalidSpec"]


class Condition(ApiModel):
    type: ConditionType
    status: Literal["True", "False", "Unknown"]
    reason: str
    message: str | None = None
    last_transition_time: str | None = None
    observed_generation: int | None = None


class LocalAttnDeploymentStatus(ApiModel):
    observed_generation: int | None = None
    phase: Phase | None = None
    desired_replicas: int | None = None
    replicas: int = 0
    ready_replicas: int = 0
    updated_replicas: int = 0
    pending_replicas: int = 0
    ready: str | None = Field(default=None, description="readyReplicas/replicas, for kubectl get.")
    selector: str | None = Field(default=None, description="Label selector of the serving pods (scale).")
    current_revision: str | None = None
    canary_weight: int | None = Field(default=None, ge=0, le=100)
    p95_latency_seconds: float | None = None
    quality: float | None = None
    conditions: list[Condition] = Field(default_factory=list)


class LocalAttnDeployment(ApiModel):
    """The whole object, as the CRD's root schema (apiVersion/kind/metadata are implicit)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    spec: LocalAttnDeploymentSpec
    status: LocalAttnDeploymentStatus | None = None


def parse_spec(raw: dict[str, Any]) -> LocalAttnDeploymentSpec:
    """Parse a spec as read from the API (raises pydantic.ValidationError)."""
    return LocalAttnDeploymentSpec.model_validate(raw)
