"""The LocalAttnDeployment API: pydantic models are the single source of the CRD schema.

`crds/localattndeployment.yaml` is generated from these classes (`localattn crd generate`); what the
OpenAPI schema can express (types, ranges, enums, required fields) lives here as field constraints, and
cross-field rules live in `validation.py`, because Kubernetes 1.20 has no CEL to check them server-side. The
cross-field rules that CEL can state cheaply are also attached here (`cel`), and emitted as
`x-kubernetes-validations` in the CRD's variant for Kubernetes >= 1.25 (crd.py), which then refuses such a spec
at `kubectl apply`; tests/operator/test_cel_rules.py evaluates each rule against its Python twin.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field
from pydantic.alias_generators import to_camel

CEL_KEY = "x-kubernetes-validations"

GROUP = "localattn.dev"
VERSION = "v1alpha1"
KIND = "LocalAttnDeployment"
PLURAL = "localattndeployments"
SINGULAR = "localattndeployment"
SHORT_NAMES = ["lad"]

# A Kubernetes quantity: "1", 1, "500m", "16Gi". The CRD marks it int-or-string.
Quantity = Annotated[int | str, Field(json_schema_extra={"x-kubernetes-int-or-string": True})]


def cel(*rules: tuple[str, str, str | None]) -> ConfigDict:
    """A model's CEL rules as (rule, message, fieldPath relative to the object or None); `self` is the object.

    Rules may rely on server-side defaults (applied before validation) and guard optional fields with has().
    Only rules that the operator also checks (validation.py, rollout_validation.py) belong here: on 1.20 they
    are not enforced, and a CEL rule stricter than Python would refuse at admission what the operator accepts.
    """
    return ConfigDict(json_schema_extra={CEL_KEY: [
        {"rule": rule, "message": message, **({"fieldPath": path} if path else {})} for rule, message, path in rules
    ]})


# Env the operator sets on every serving container itself (render.py); a duplicate is rejected by the apiserver
# only when the Deployment is applied, so validation.py (and the CRD's CEL rule on EnvVar) catch it first.
RESERVED_ENV = ("LOCALATTN_CONFIG", "HOME", "HF_HOME", "POD_IP", "POD_NAME", "POD_NAMESPACE")


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

    model_config = cel(
        ("has(self.value) != has(self.secretKeyRef)", "set exactly one of value or secretKeyRef", None),
        (f"!(self.name in {list(RESERVED_ENV)})",
         f"is set by the operator itself (reserved: {', '.join(sorted(RESERVED_ENV))})", ".name"),
    )

    name: str = Field(min_length=1, max_length=253)  # bounded: the CEL rule's cost estimate needs it
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
    env: list[EnvVar] = Field(default_factory=list, max_length=256)


class GlobalLayers(ApiModel):
    """Layers that keep full attention: explicit `indices`, or every `every`-th layer from `offset`."""

    model_config = cel(("!(has(self.indices) && has(self.every))", "set either indices or every, not both", None))

    indices: list[int] | None = None
    every: int | None = Field(default=None, ge=1)
    offset: int = Field(default=0, ge=0)


class CalibrationPlanRef(ApiModel):
    """A `localattn calibrate` plan in a ConfigMap (`localattn calibrate --to-configmap NAME` writes one)."""

    config_map_name: str = Field(min_length=1, max_length=253)
    key: str = Field(default="plan.json", min_length=1, max_length=253)


class LocalAttentionSpec(ApiModel):
    enabled: bool = True
    window_size: int = Field(default=1024, ge=1, description="W: each query sees the last W tokens.")
    sink_tokens: int = Field(default=4, ge=0, le=4096, description="S: the first S tokens stay visible.")
    global_layers: GlobalLayers = Field(default_factory=GlobalLayers)
    min_context_length: int = Field(
        default=0, ge=0, description="Sequences shorter than this use full attention in every layer."
    )
    calibration_plan: CalibrationPlanRef | None = Field(
        default=None,
        description="A calibration plan whose globalLayers replace globalLayers (mounted into the pod as planFile).",
    )


class MemorySpec(ApiModel):
    gpu_memory_utilization: float = Field(default=0.9, gt=0, le=1)
    kv_cache_dtype: Literal["auto", "bfloat16", "float16", "fp8", "fp8_e4m3", "fp8_e5m2"] = "auto"
    cpu_offload_gb: float = Field(default=0, ge=0, alias="cpuOffloadGB")
    swap_space_gb: float = Field(
        default=0, ge=0, alias="swapSpaceGB", description="CPU KV offloading buffer (vLLM >= 0.11: --kv-offloading-size)."
    )
    kv_cache_memory: int | str | None = Field(  # an optional Quantity, flat so the CRD says int-or-string
        default=None,
        json_schema_extra={"x-kubernetes-int-or-string": True},
        description=(
            "KV cache size per pod, a Kubernetes quantity (e.g. 512Mi, 4Gi): rendered as vLLM's "
            "--kv-cache-memory-bytes, which takes precedence over gpuMemoryUtilization for the KV cache. "
            "Needed on CPU nodes, where vLLM otherwise reserves gpuMemoryUtilization x RAM."
        ),
    )


class AutoscalingTargets(ApiModel):
    """What the autoscaler keeps each replica at; set one or more (the largest recommendation wins, as in the HPA).

    Per-replica signals are averaged over the LAD's ready pods; latencies are the LAD-wide p95 from vLLM's
    histograms (percentiles do not average). Missing data holds the replica count, never reads as zero load.
    """

    model_config = cel((
        "has(self.waitingRequestsPerReplica) || has(self.kvCacheUsage) || has(self.p95LatencySeconds)"
        " || has(self.p95TTFTSeconds)",
        "set at least one of waitingRequestsPerReplica, kvCacheUsage, p95LatencySeconds, p95TTFTSeconds", None))

    waiting_requests_per_replica: float | None = Field(
        default=None, gt=0, le=10000, description="Average `vllm:num_requests_waiting` per ready replica."
    )
    kv_cache_usage: float | None = Field(
        default=None, gt=0, le=1,
        description=(
            "Target `vllm:kv_cache_usage_perc` (0..1). The decision converts waiting requests into KV demand at "
            "the measured KV cost per running sequence, so local attention's smaller per-sequence KV counts."
        ),
    )
    p95_latency_seconds: float | None = Field(
        default=None, gt=0, description="LAD-wide p95 of `vllm:e2e_request_latency_seconds`."
    )
    p95_ttft_seconds: float | None = Field(
        default=None, gt=0, alias="p95TTFTSeconds", description="LAD-wide p95 of `vllm:time_to_first_token_seconds`."
    )


class ScaleUpRules(ApiModel):
    """HPA defaults: react at once, but at most double (or +4 pods) per period, so one spike cannot max out."""

    stabilization_window_seconds: int = Field(
        default=0, ge=0, le=3600, description="Scale up to the lowest recommendation seen over this window."
    )
    max_increase_percent: int = Field(default=100, ge=1, le=1000, description="Per period, relative to its start.")
    max_increase_pods: int = Field(default=4, ge=1, le=1000, description="Per period; the larger limit applies.")
    period_seconds: int = Field(default=15, ge=1, le=1800)


class ScaleDownRules(ApiModel):
    """HPA default window (300 s: scale down to the highest recommendation seen), plus a delay after any scale."""

    stabilization_window_seconds: int = Field(
        default=300, ge=0, le=3600, description="Scale down to the highest recommendation seen over this window."
    )
    delay_seconds: int = Field(
        default=120, ge=0, le=3600,
        description="No scale-down sooner than this after the last scale event (new vLLM pods need minutes to warm).",
    )


class AutoscalingSpec(ApiModel):
    """When set, the operator owns `spec.replicas` (written through the scale subresource); a hand scale is
    reverted with a `ScaleReverted` event. Leave it unset to drive the LAD with your own HPA or KEDA."""

    model_config = cel(("!has(self.minReplicas) || self.minReplicas <= self.maxReplicas",
                        "must not exceed maxReplicas", ".minReplicas"))

    min_replicas: int = Field(
        default=1, ge=1, le=1000, description="At least 1: per-replica metrics cannot wake a LAD from zero."
    )
    max_replicas: int = Field(ge=1, le=1000)
    targets: AutoscalingTargets
    scale_up: ScaleUpRules = Field(default_factory=ScaleUpRules)
    scale_down: ScaleDownRules = Field(default_factory=ScaleDownRules)


# --- progressive delivery (spec) --------------------------------------------------------------------------
# Durations are Go-style strings as in Argo Rollouts and Flagger ("30s", "5m", "1h30m"); `duration.py` parses
# them. The pattern lets the CRD reject what is not a duration at `kubectl apply`.
DURATION_PATTERN = r"^([0-9]+h)?([0-9]+m)?([0-9]+s)?$"
Duration = Annotated[str, Field(pattern=DURATION_PATTERN, min_length=2, max_length=24)]
# A replica count or a percentage of spec.replicas ("25%"), as a Deployment's maxSurge.
IntOrPercent = Annotated[int | str, Field(json_schema_extra={"x-kubernetes-int-or-string": True})]


class PauseStep(ApiModel):
    """Hold the current weight: for `duration`, or (without it) until a manual resume or promote."""

    duration: Duration | None = Field(default=None, description="Omitted: wait for localattn.dev/resume or promote.")


class RolloutStep(ApiModel):
    """One step: `setWeight` (then one analysis interval at that weight) or `pause`. Exactly one of them."""

    model_config = cel(
        ("has(self.setWeight) != has(self.pause)", "set exactly one of setWeight or pause", None),
        ("!has(self.pause) || !has(self.analysisInterval)", "only a setWeight step is analysed", ".analysisInterval"),
    )

    set_weight: int | None = Field(
        default=None, ge=1, le=100, description="Percent of traffic for the canary; analysed before the next step."
    )
    pause: PauseStep | None = None
    analysis_interval: Duration | None = Field(
        default=None, description="This step's analysis window (default spec.analysis.interval); setWeight only."
    )


def _default_steps() -> list[RolloutStep]:
    return [RolloutStep(set_weight=10), RolloutStep(set_weight=25), RolloutStep(set_weight=50)]


class EndpointPickerRef(ApiModel):
    """The Endpoint Picker (EPP) Service the arms' InferencePools name (Gateway API Inference Extension v1,
    `spec.endpointPickerRef`): the user runs it; the operator only points each arm's pool at it."""

    name: str = Field(min_length=1, max_length=253, description="The EPP's Service in the LAD's namespace.")
    port: int = Field(default=9002, ge=1, le=65535, description="The EPP's ext-proc port (upstream default 9002).")
    failure_mode: Literal["FailOpen", "FailClose"] = Field(
        default="FailClose", description="What the gateway does when the EPP does not answer.")


class GatewayAPIRouter(ApiModel):
    """Weighted backendRefs of an HTTPRoute in the LAD's namespace; the operator patches only the weights."""

    model_config = cel(("self.backendKind != 'InferencePool' || has(self.endpointPicker)",
                        "backendKind InferencePool needs endpointPicker (the pools' spec.endpointPickerRef)",
                        ".endpointPicker"))

    http_route: str = Field(min_length=1, max_length=253)
    backend_kind: Literal["Service", "InferencePool"] = Field(
        default="Service",
        description="InferencePool: Gateway API Inference Extension (inference.networking.k8s.io/v1); the "
        "operator owns one pool per arm (NAME-stable, NAME-canary) selecting that arm's pods.",
    )
    endpoint_picker: EndpointPickerRef | None = Field(
        default=None, description="backendKind InferencePool: the Endpoint Picker the pools name (required then)."
    )


class RouterSpec(ApiModel):
    """How traffic is split. Unset: `replicas` (the share of ready pods behind the one Service)."""

    gateway_api: GatewayAPIRouter | None = Field(default=None, alias="gatewayAPI")


class RolloutSpec(ApiModel):
    steps: list[RolloutStep] | None = Field(
        default=None, max_length=32,
        description=(
            "Canary steps; after the last one the canary is promoted. Omitted: setWeight 10, 25, 50. "
            "[]: promote at once (no analysis)."
        ),
    )
    max_surge: IntOrPercent = Field(
        default="25%",
        description="Extra pods (count or % of replicas) the rollout may add; 0 takes canary pods from stable.",
    )
    progress_deadline_seconds: int = Field(
        default=600, ge=30, le=86400,
        description="A canary not ready this long after a step began is rolled back; also each arm's Deployment "
        "progressDeadlineSeconds, so a first revision never available this long is reported Degraded.",
    )
    router: RouterSpec = Field(default_factory=RouterSpec)
    post_promotion_guard: Duration | None = Field(
        default=None, description="After a promotion, a quality regression this soon rolls back to the previous revision."
    )
    revision_history_limit: int = Field(default=5, ge=1, le=50, description="Revision records kept for rollback.")

    def effective_steps(self) -> list[RolloutStep]:
        return _default_steps() if self.steps is None else self.steps


class LatencyRegression(ApiModel):
    """Largest allowed p95 increase of the canary over stable, in percent, per latency. Only the listed gates
    apply (a null cannot disable a defaulted field in a CRD, so the defaults are on the whole object)."""

    e2e: float | None = Field(default=None, ge=0, le=1000, alias="e2e", description="End-to-end request latency.")
    ttft: float | None = Field(default=None, ge=0, le=1000, description="Time to first token.")
    itl: float | None = Field(default=None, ge=0, le=1000, description="Inter-token latency.")


_LATENCY_DEFAULTS: dict[str, Any] = {"e2e": 20.0, "ttft": 20.0, "itl": 20.0}


def _default_latency() -> LatencyRegression:
    return LatencyRegression.model_validate(_LATENCY_DEFAULTS)


class Thresholds(ApiModel):
    max_latency_regression_percent: LatencyRegression = Field(
        default_factory=_default_latency, json_schema_extra={"default": _LATENCY_DEFAULTS},
        description="Default: 20% for each of e2e, ttft and itl; `{}` disables the latency gates.",
    )
    max_error_rate: float | None = Field(default=0.01, ge=0, le=1, description="Non-2xx share of the canary's requests.")
    max_perplexity_ratio: float | None = Field(
        default=None, ge=1, le=100, description="Canary / stable probe perplexity (needs spec.probe.enabled)."
    )
    max_exact_match_drop: float | None = Field(
        default=None, ge=0, le=1, description="Stable minus canary probe exact match (needs spec.probe.enabled)."
    )
    min_agreement: float | None = Field(
        default=None, ge=0, le=1, description="Paired greedy token agreement (needs spec.pairedComparison.enabled)."
    )
    min_cost_saving_percent: float | None = Field(
        default=None, ge=-100, le=100, description="Cost per 1M generated tokens, canary vs stable; negative allows a rise."
    )


class PrometheusProvider(ApiModel):
    url: str | None = Field(default=None, min_length=1, description="Default: the operator's --prometheus-url.")


class ScrapeProvider(ApiModel):
    """Read the arms' pods' /metrics directly (no Prometheus needed)."""


class MetricsProviderSpec(ApiModel):
    """Where measurements come from. Both set: Prometheus first, scraping when Prometheus errors."""

    prometheus: PrometheusProvider | None = None
    scrape: ScrapeProvider | None = None


class AnalysisSpec(ApiModel):
    interval: Duration = Field(default="1m", description="Window of each measurement (and the time per step).")
    initial_delay: Duration = Field(
        default="0s",
        description="Wait this long after a step's pods are ready before its first window (Argo's initialDelay): "
        "a new pod's first requests (cold caches, lazy kernel builds) are not the revision's steady latency.",
    )
    thresholds: Thresholds = Field(default_factory=Thresholds)
    min_requests: int = Field(
        default=20, ge=1, le=1_000_000, description="Fewer requests per arm in a window: the window is missing data."
    )
    failure_limit: int = Field(default=0, ge=0, le=100, description="Failed measurements beyond this roll back.")
    inconclusive_limit: int = Field(
        default=3, ge=0, le=100, description="Missing-data measurements beyond this roll back."
    )
    consecutive_error_limit: int = Field(
        default=4, ge=0, le=100,
        description="Provider-error windows in a row up to this hold without charging inconclusiveLimit; "
        "beyond it each counts as missing data.",
    )
    missing_data: Literal["inconclusive", "fail"] = Field(
        default="inconclusive", description="inconclusive: hold (never promote blindly); fail: count as a failure."
    )
    provider: MetricsProviderSpec = Field(default_factory=MetricsProviderSpec)
    length_buckets: list[int] | None = Field(
        default=None, max_length=8,
        description="Prompt-length boundaries in tokens; default [W, 4W] from localAttention.windowSize.",
    )


class CostSpec(ApiModel):
    gpu_hour_price: float = Field(gt=0, le=1_000_000)
    currency: str = Field(default="USD", min_length=1, max_length=8)


class ConfigMapKeyRef(ApiModel):
    name: str = Field(min_length=1, max_length=253)
    key: str = Field(min_length=1, max_length=253)


class ProbeSpec(ApiModel):
    """The runtime's quality probe (teacher-forced perplexity and greedy exact match on a golden set)."""

    enabled: bool = False
    golden_set: ConfigMapKeyRef | None = Field(default=None, description="Default: the runtime's built-in set.")
    interval_seconds: int = Field(default=60, ge=5, le=86400)
    max_tokens: int = Field(default=16, ge=1, le=4096)


class PairedComparisonSpec(ApiModel):
    """The operator sends the same prompts, greedy, to one stable and one canary pod and compares the tokens."""

    enabled: bool = False
    prompts: ConfigMapKeyRef | None = Field(default=None, description="Extra prompts (one per line) besides the golden set.")
    max_prompts: int = Field(default=32, ge=1, le=1024)
    max_tokens: int = Field(default=32, ge=1, le=4096)


class NetworkPolicyPeer(ApiModel):
    """Who may connect, as a NetworkPolicy peer: pods by label (in the LAD's namespace, or in the namespaces
    `namespaceSelector` picks), or whole namespaces by label. `{}` as a selector matches everything."""

    pod_selector: dict[str, str] | None = Field(default=None, description="matchLabels of the client pods.")
    namespace_selector: dict[str, str] | None = Field(default=None, description="matchLabels of their namespaces.")


PROMETHEUS_PEER: dict[str, Any] = {"namespaceSelector": {"kubernetes.io/metadata.name": "monitoring"},
                                   "podSelector": {"app.kubernetes.io/name": "prometheus"}}


def _prometheus_peer() -> NetworkPolicyPeer:
    return NetworkPolicyPeer.model_validate(PROMETHEUS_PEER)


class NetworkPolicySpec(ApiModel):
    """An operator-rendered NetworkPolicy `<name>-serving`: ingress to every serving pod of the LAD (all revisions,
    both tracks) only on the vLLM port, only from `clients` and `prometheus`. Needs a CNI that enforces
    NetworkPolicy. Off by default; turning it off deletes the policy."""

    enabled: bool = False
    clients: list[NetworkPolicyPeer] | None = Field(
        default=None, max_length=32,
        description="Default: pods labelled localattn.dev/client-of=<name> in the LAD's namespace, and every pod in "
        "namespaces labelled localattn.dev/client-of=<name>.",
    )
    prometheus: NetworkPolicyPeer = Field(
        default_factory=_prometheus_peer, json_schema_extra={"default": PROMETHEUS_PEER},
        description="Who scrapes /metrics. Default: pods app.kubernetes.io/name=prometheus in the namespace monitoring "
        "(the kubernetes.io/metadata.name label is set from Kubernetes 1.21 on; label it yourself on 1.20).",
    )


_MAX_LEN = "!has(self.runtime.maxModelLen) || "
_GUARD = "!has(self.rollout) || !has(self.rollout.postPromotionGuard) || "


class LocalAttnDeploymentSpec(ApiModel):
    model_config = cel(
        (_MAX_LEN + "self.localAttention.windowSize < self.runtime.maxModelLen",
         "must be smaller than spec.runtime.maxModelLen; otherwise every layer is global", ".localAttention.windowSize"),
        (_MAX_LEN + "self.localAttention.sinkTokens + self.localAttention.windowSize <= self.runtime.maxModelLen",
         "sinkTokens + windowSize must not exceed spec.runtime.maxModelLen", ".localAttention.sinkTokens"),
        (_MAX_LEN + "self.localAttention.minContextLength <= self.runtime.maxModelLen",
         "must not exceed spec.runtime.maxModelLen: local attention would never be used",
         ".localAttention.minContextLength"),
        (_MAX_LEN + "!has(self.analysis.lengthBuckets) || self.analysis.lengthBuckets.all(b, b < self.runtime.maxModelLen)",
         "every bucket edge must be below spec.runtime.maxModelLen", ".analysis.lengthBuckets"),
        ("!self.localAttention.enabled || !self.memory.kvCacheDtype.startsWith('fp8')",
         "the local-attention kernels read an unquantized KV cache; use auto, bfloat16 or float16, or set "
         "spec.localAttention.enabled: false", ".memory.kvCacheDtype"),
        ("!has(self.model.revision) || self.model.uri.startsWith('hf://')", "only meaningful for hf:// models",
         ".model.revision"),
        (_GUARD + "self.probe.enabled", "the guard watches the quality probe; set spec.probe.enabled",
         ".rollout.postPromotionGuard"),
        (_GUARD + "has(self.analysis.thresholds.maxPerplexityRatio) || has(self.analysis.thresholds.maxExactMatchDrop)",
         "nothing to guard; set spec.analysis.thresholds.maxPerplexityRatio or maxExactMatchDrop",
         ".rollout.postPromotionGuard"),
        ("!has(self.analysis.thresholds.maxPerplexityRatio) || self.probe.enabled",
         "no metric source; set spec.probe.enabled", ".analysis.thresholds.maxPerplexityRatio"),
        ("!has(self.analysis.thresholds.maxExactMatchDrop) || self.probe.enabled",
         "no metric source; set spec.probe.enabled", ".analysis.thresholds.maxExactMatchDrop"),
    )

    model: ModelSource
    runtime: RuntimeSpec = Field(default_factory=RuntimeSpec)
    local_attention: LocalAttentionSpec = Field(default_factory=LocalAttentionSpec)
    memory: MemorySpec = Field(default_factory=MemorySpec)
    replicas: int = Field(default=1, ge=0, le=1000)
    autoscaling: AutoscalingSpec | None = Field(
        default=None, description="Scale on vLLM's load signals; the operator then owns spec.replicas."
    )
    rollout: RolloutSpec | None = Field(
        default=None, description="Canary rollout of a new revision; unset: a new revision replaces the old at once."
    )
    analysis: AnalysisSpec = Field(default_factory=AnalysisSpec)
    cost: CostSpec | None = None
    probe: ProbeSpec = Field(default_factory=ProbeSpec)
    paired_comparison: PairedComparisonSpec = Field(default_factory=PairedComparisonSpec)
    network_policy: NetworkPolicySpec = Field(
        default_factory=NetworkPolicySpec, description="Only the Service's clients and Prometheus reach the pods."
    )


Phase = Literal["Pending", "Progressing", "Ready", "Degraded", "InvalidSpec"]
ConditionType = Literal["Ready", "Progressing", "Degraded", "InvalidSpec", "QualityDrift"]


class Condition(ApiModel):
    type: ConditionType
    status: Literal["True", "False", "Unknown"]
    reason: str
    message: str | None = None
    last_transition_time: str | None = None
    observed_generation: int | None = None


class ScaleRecord(ApiModel):
    """One autoscaler decision that changed the replica count: old -> new, and the signal that drove it."""

    time: str
    from_replicas: int = Field(alias="from")
    to_replicas: int = Field(alias="to")
    signal: str
    value: float | None = None
    reason: str


class Recommendation(ApiModel):
    """A past raw recommendation, kept (bounded by the windows) so a restarted operator keeps stabilising."""

    time: str
    replicas: int


class AutoscalingStatus(ApiModel):
    desired_replicas: int | None = None
    current_replicas: int | None = None
    last_decision: ScaleRecord | None = None
    headroom_per_replica: float | None = Field(
        default=None, description="Concurrent sequences each ready replica's KV cache can still admit (measured)."
    )
    gpu_limited: bool = False
    gpu_limited_message: str | None = None
    recommendations: list[Recommendation] = Field(default_factory=list)
    scale_events: list[ScaleRecord] = Field(default_factory=list, description="Recent scale events (rate limits).")


# --- progressive delivery (status) ------------------------------------------------------------------------
RolloutPhase = Literal["Idle", "Progressing", "Paused", "Promoting", "Promoted", "RollingBack", "RolledBack", "Aborted"]
# A gate whose query the provider could not answer is `Error` (which query, and the provider's message); the
# window it belongs to is Inconclusive (provider errors are not failures: the rollout holds, see `analysis.count`).
GatePhase = Literal["Successful", "Failed", "Inconclusive", "Error"]


def _legacy_error_window(value: object) -> object:
    """A status written before provider-error windows were Inconclusive says `Error`: read it as Inconclusive
    (so that an upgraded operator keeps the rollout's state, and rewrites it within the schema)."""
    return "Inconclusive" if value == "Error" else value


MeasurementPhase = Annotated[Literal["Successful", "Failed", "Inconclusive"], BeforeValidator(_legacy_error_window)]
BUCKET_ALL = "all"


class ArmFiguresStatus(ApiModel):
    """What one arm measured over one window (or one length bucket of it); null: no data."""

    requests: float | None = None
    p95_latency_seconds: float | None = None
    p95_ttft_seconds: float | None = Field(default=None, alias="p95TTFTSeconds")
    p95_itl_seconds: float | None = Field(default=None, alias="p95ITLSeconds")
    error_rate: float | None = None
    tokens_per_gpu_second: float | None = Field(default=None, alias="tokensPerGPUSecond")
    cost_per_million_tokens: float | None = None
    probe_perplexity: float | None = None
    probe_exact_match: float | None = None


class BucketFiguresStatus(ArmFiguresStatus):
    bucket: str = Field(description="Prompt length in tokens, `lo-hi` (hi exclusive) or `lo-inf`.")


class ArmAnalysisStatus(ArmFiguresStatus):
    revision: str | None = None
    buckets: list[BucketFiguresStatus] = Field(default_factory=list)


class PairedFiguresStatus(ApiModel):
    bucket: str = BUCKET_ALL
    prompts: int = 0
    agreement: float | None = Field(default=None, description="Share of greedy tokens equal in both arms.")
    first_divergence: float | None = Field(default=None, description="Mean position of the first differing token.")
    logprob_divergence: float | None = Field(default=None, description="Mean |logprob difference| per token.")


class GateStatus(ApiModel):
    """One gate of a measurement and its numbers; `Error`: the provider did not answer (window Inconclusive)."""

    gate: str
    bucket: str = BUCKET_ALL
    phase: GatePhase
    canary: float | None = None
    stable: float | None = None
    threshold: float | None = None
    message: str = ""


class Measurement(ApiModel):
    """One analysis window (Argo's Measurement): bounded list in status, newest last."""

    phase: MeasurementPhase
    started_at: str
    finished_at: str
    step_index: int
    canary_revision: str
    message: str = ""


class AnalysisCounters(ApiModel):
    successful: int = 0
    failed: int = 0
    inconclusive: int = Field(default=0, description="Windows charged to inconclusiveLimit (missing data).")
    errors: int = Field(default=0, description="Provider-error windows (Inconclusive), charged or not.")
    consecutive_errors: int = Field(
        default=0, description="Provider-error windows in a row up to now (reset by any other)."
    )


class LastAnalysisStatus(ApiModel):
    phase: MeasurementPhase
    finished_at: str
    stable: ArmAnalysisStatus = Field(default_factory=ArmAnalysisStatus)
    canary: ArmAnalysisStatus = Field(default_factory=ArmAnalysisStatus)
    paired: list[PairedFiguresStatus] = Field(default_factory=list)
    gates: list[GateStatus] = Field(default_factory=list)


class RolloutDecisionRecord(ApiModel):
    """One state change of the rollout and why (bounded history, newest last)."""

    time: str
    from_phase: RolloutPhase = Field(alias="from")
    to_phase: RolloutPhase = Field(alias="to")
    reason: str
    message: str = ""


class ManualAcknowledged(ApiModel):
    """The last value of each control annotation already acted on: each request is handled exactly once."""

    promote: str | None = None
    abort: str | None = None
    pause: str | None = None
    resume: str | None = None


class RolloutStatus(ApiModel):
    phase: RolloutPhase = "Idle"
    stage: Literal["shift", "handover"] | None = Field(
        default=None, description="Promoting/RollingBack: shift capacity to the new arm, then hand it to the stable arm."
    )
    message: str = ""
    stable_revision: str | None = None
    canary_revision: str | None = None
    previous_revision: str | None = Field(default=None, description="Stable before the last promotion (guard rollback).")
    rejected_revision: str | None = Field(default=None, description="Rolled back or aborted: not retried until changed.")
    draining_revision: str | None = Field(
        default=None, description="A removed canary whose ready pods serve only until stable is back to full capacity."
    )
    step_index: int = 0
    step_started_at: str | None = None
    settled_at: str | None = Field(default=None, description="When this step's arms were first ready.")
    next_analysis_at: str | None = None
    pause_until: str | None = None
    paused_manually: bool = False
    guard_until: str | None = None
    quality_drift: bool = Field(default=False, description="After the guard: stable quality below the thresholds.")
    desired_weight: int = Field(default=0, ge=0, le=100)
    achieved_weight: int = Field(default=0, ge=0, le=100, description="Ready canary / ready pods (replicas router).")
    stable_replicas: int = 0
    canary_replicas: int = 0
    started_at: str | None = None
    last_transition_at: str | None = None
    counters: AnalysisCounters = Field(default_factory=AnalysisCounters)
    last_analysis: LastAnalysisStatus | None = None
    baseline: ArmAnalysisStatus | None = Field(default=None, description="The previous stable's figures (guard).")
    measurements: list[Measurement] = Field(default_factory=list)
    history: list[RolloutDecisionRecord] = Field(default_factory=list)
    acknowledged: ManualAcknowledged = Field(default_factory=ManualAcknowledged)


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
    autoscaling: AutoscalingStatus | None = None
    rollout: RolloutStatus | None = None


class LocalAttnDeployment(ApiModel):
    """The whole object, as the CRD's root schema (apiVersion/kind/metadata are implicit)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    spec: LocalAttnDeploymentSpec
    status: LocalAttnDeploymentStatus | None = None


def parse_spec(raw: dict[str, Any]) -> LocalAttnDeploymentSpec:
    """Parse a spec as read from the API (raises pydantic.ValidationError)."""
    return LocalAttnDeploymentSpec.model_validate(raw)
