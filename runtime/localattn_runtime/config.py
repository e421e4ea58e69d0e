"""The runtime configuration (operator -> plugin): parsed once, validated with errors that name the field.

Pure: no vLLM or torch imports, so the CLI and unit tests can use it as is. The JSON uses the CRD's camelCase
names (`spec.localAttention`); the dataclasses use snake_case. Its field names and defaults come from the
contract's JSON Schema (`localattn_contract`), the one definition the operator renders against as well;
tests/runtime/test_contract.py feeds every variant the operator renders through `parse`.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import localattn_contract as contract

ENV_FILE = contract.ENV_FILE
ENV_JSON = contract.ENV_JSON


class ConfigError(ValueError):
    """A bad plugin configuration; `field` is the dotted JSON path of the offending value."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"localattn config: {field}: {message}")
        self.field = field


@dataclass(frozen=True)
class GlobalLayers:
    """Which layers keep full attention: explicit indices, or `offset, offset+every, ...`."""

    indices: tuple[int, ...] = ()
    every: int | None = None
    offset: int = 0

    def resolve(self, num_layers: int) -> frozenset[int]:
        """The set of global layer indices for a model with `num_layers` layers."""
        if self.every is not None:
            return frozenset(range(self.offset, num_layers, self.every))
        return frozenset(self.indices)


@dataclass(frozen=True)
class ProbeConfig:
    enabled: bool = contract.default("probe.enabled")
    interval_seconds: float = float(contract.default("probe.intervalSeconds"))
    golden_set_file: str = contract.default("probe.goldenSetFile")
    max_tokens: int = contract.default("probe.maxTokens")


@dataclass(frozen=True)
class LocalAttnConfig:
    enabled: bool = contract.default("enabled")
    window_size: int = contract.default("windowSize")
    sink_tokens: int = contract.default("sinkTokens")
    global_layers: GlobalLayers = field(default_factory=GlobalLayers)
    min_context_length: int = contract.default("minContextLength")
    plan_file: str | None = None
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    length_buckets: tuple[int, ...] = ()  # empty: derived from the window (`bucket_boundaries`)

    def bucket_boundaries(self) -> list[int]:
        """Prompt-length edges of the latency histogram's `length_bucket` label: the configured ones, else
        [W, 4W], so prompts below the window (where local attention changes nothing) are a bucket of their own."""
        return list(self.length_buckets) or contract.default_bucket_boundaries(self.window_size)

    def global_layer_set(self, num_layers: int) -> frozenset[int]:
        return self.global_layers.resolve(num_layers)

    def is_global(self, layer: int, num_layers: int) -> bool:
        return layer in self.global_layer_set(num_layers)

    def sink_blocks(self, block_size: int) -> int:
        """KV blocks holding the sink tokens: never freed."""
        return math.ceil(self.sink_tokens / block_size)

    def validate_for_model(self, num_layers: int) -> None:
        """Checks that need the model (done once the engine knows it): every global index must exist."""
        if self.global_layers.every is not None:
            if self.global_layers.offset >= num_layers:
                raise ConfigError("globalLayers.offset",
                                  f"{self.global_layers.offset} is beyond the model's {num_layers} layers")
            return
        for i in self.global_layers.indices:
            if i >= num_layers:
                raise ConfigError("globalLayers.indices",
                                  f"layer {i} is beyond the model's {num_layers} layers (0..{num_layers - 1})")

    def to_json(self) -> dict[str, Any]:
        """The camelCase form (what the operator renders); `parse(cfg.to_json()) == cfg`."""
        gl: dict[str, Any] = (
            {"every": self.global_layers.every, "offset": self.global_layers.offset}
            if self.global_layers.every is not None else {"indices": list(self.global_layers.indices)})
        out: dict[str, Any] = {
            "enabled": self.enabled, "windowSize": self.window_size, "sinkTokens": self.sink_tokens,
            "globalLayers": gl, "minContextLength": self.min_context_length,
            "probe": {"enabled": self.probe.enabled, "intervalSeconds": self.probe.interval_seconds,
                      "goldenSetFile": self.probe.golden_set_file, "maxTokens": self.probe.max_tokens},
        }
        if self.plan_file is not None:
            out["planFile"] = self.plan_file
        if self.length_buckets:
            out["lengthBuckets"] = list(self.length_buckets)
        return out


_TOP_KEYS = set(contract.keys())
_PROBE_KEYS = set(contract.keys("probe"))
_GLOBAL_LAYERS_KEYS = set(contract.keys("globalLayers"))


def _int(obj: Mapping[str, Any], key: str, path: str, default: int, *, minimum: int) -> int:
    value = obj.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(path, f"must be an integer, got {value!r}")
    if value < minimum:
        raise ConfigError(path, f"must be >= {minimum}, got {value}")
    return value


def _bool(obj: Mapping[str, Any], key: str, path: str, default: bool) -> bool:
    value = obj.get(key, default)
    if not isinstance(value, bool):
        raise ConfigError(path, f"must be true or false, got {value!r}")
    return value


def _unknown(obj: Mapping[str, Any], allowed: set[str], path: str) -> None:
    extra = sorted(set(obj) - allowed)
    if extra:
        where = f"{path}.{extra[0]}" if path else extra[0]
        raise ConfigError(where, f"unknown field (allowed: {', '.join(sorted(allowed))})")


def _global_layers(value: Any) -> GlobalLayers:
    if value is None:
        return GlobalLayers()
    if isinstance(value, list):  # tolerated shorthand: a bare list of indices
        value = {"indices": value}
    if not isinstance(value, Mapping):
        raise ConfigError("globalLayers", f"must be an object, got {value!r}")
    _unknown(value, _GLOBAL_LAYERS_KEYS, "globalLayers")
    if "every" in value:
        if "indices" in value:
            raise ConfigError("globalLayers", "give either indices or every/offset, not both")
        every = _int(value, "every", "globalLayers.every", 1, minimum=1)
        offset = _int(value, "offset", "globalLayers.offset", 0, minimum=0)
        return GlobalLayers(every=every, offset=offset)
    if "offset" in value:
        raise ConfigError("globalLayers.offset", "only valid together with globalLayers.every")
    indices = value.get("indices", [])
    if not isinstance(indices, list):
        raise ConfigError("globalLayers.indices", f"must be a list of layer indices, got {indices!r}")
    for n, i in enumerate(indices):
        if isinstance(i, bool) or not isinstance(i, int) or i < 0:
            raise ConfigError(f"globalLayers.indices[{n}]", f"must be a layer index >= 0, got {i!r}")
    if len(set(indices)) != len(indices):
        raise ConfigError("globalLayers.indices", f"duplicate layer index in {indices}")
    return GlobalLayers(indices=tuple(sorted(indices)))


def _length_buckets(value: Any) -> tuple[int, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ConfigError("lengthBuckets", f"must be a list of prompt lengths in tokens, got {value!r}")
    for n, edge in enumerate(value):
        if isinstance(edge, bool) or not isinstance(edge, int) or edge < 1:
            raise ConfigError(f"lengthBuckets[{n}]", f"must be a token count >= 1, got {edge!r}")
        if n and edge <= value[n - 1]:
            raise ConfigError(f"lengthBuckets[{n}]", f"must be greater than the one before ({value[n - 1]})")
    return tuple(value)


def _probe(value: Any) -> ProbeConfig:
    if value is None:
        return ProbeConfig()
    if not isinstance(value, Mapping):
        raise ConfigError("probe", f"must be an object, got {value!r}")
    _unknown(value, _PROBE_KEYS, "probe")
    interval = value.get("intervalSeconds", ProbeConfig.interval_seconds)
    if isinstance(interval, bool) or not isinstance(interval, int | float) or interval <= 0:
        raise ConfigError("probe.intervalSeconds", f"must be a number > 0, got {interval!r}")
    golden = value.get("goldenSetFile", ProbeConfig.golden_set_file)
    if not isinstance(golden, str) or not golden:
        raise ConfigError("probe.goldenSetFile", f"must be a non-empty path, got {golden!r}")
    return ProbeConfig(
        enabled=_bool(value, "enabled", "probe.enabled", ProbeConfig.enabled),
        interval_seconds=float(interval),
        golden_set_file=container_path(golden),
        max_tokens=_int(value, "maxTokens", "probe.maxTokens", ProbeConfig.max_tokens, minimum=1),
    )


def parse(obj: Any) -> LocalAttnConfig:
    """Validate the camelCase JSON object; a plan file's `globalLayers` (if `planFile` is set) wins."""
    if not isinstance(obj, Mapping):
        raise ConfigError("(root)", f"must be a JSON object, got {type(obj).__name__}")
    _unknown(obj, _TOP_KEYS, "")
    plan_file = obj.get("planFile")
    if plan_file is not None and (not isinstance(plan_file, str) or not plan_file):
        raise ConfigError("planFile", f"must be a non-empty path, got {plan_file!r}")
    cfg = LocalAttnConfig(
        enabled=_bool(obj, "enabled", "enabled", LocalAttnConfig.enabled),
        window_size=_int(obj, "windowSize", "windowSize", LocalAttnConfig.window_size, minimum=1),
        sink_tokens=_int(obj, "sinkTokens", "sinkTokens", LocalAttnConfig.sink_tokens, minimum=0),
        global_layers=_global_layers(obj.get("globalLayers")),
        min_context_length=_int(obj, "minContextLength", "minContextLength", LocalAttnConfig.min_context_length,
                                minimum=0),
        plan_file=plan_file,
        probe=_probe(obj.get("probe")),
        length_buckets=_length_buckets(obj.get("lengthBuckets")),
    )
    if plan_file is not None:
        cfg = apply_plan(cfg, read_plan(container_path(plan_file)))
    return cfg


DEV_FS_ROOT_ENV = "LOCALATTN_DEV_FS_ROOT"


def container_path(path: str, env: Mapping[str, str] | None = None) -> str:
    """A file path the operator wrote into the config (goldenSetFile, planFile): an in-container path, used as
    is. The dev cluster's process-mode pods have no mount namespace; they set LOCALATTN_DEV_FS_ROOT to where the
    pod's filesystem lies on the host, and a path that does not exist as such is looked up there."""
    root = (os.environ if env is None else env).get(DEV_FS_ROOT_ENV)
    if root and os.path.isabs(path) and not os.path.exists(path):
        return os.path.join(root, path.lstrip("/"))
    return path


def read_plan(path: str | Path) -> dict[str, Any]:
    """Read a `localattn calibrate` plan file (`{"globalLayers": [...], "windowSize": ..., ...}`)."""
    try:
        plan = json.loads(Path(path).read_text())
    except OSError as e:
        raise ConfigError("planFile", f"cannot read {path}: {e.strerror or e}") from e
    except json.JSONDecodeError as e:
        raise ConfigError("planFile", f"{path} is not valid JSON: {e}") from e
    if not isinstance(plan, Mapping) or not isinstance(plan.get("globalLayers"), list):
        raise ConfigError("planFile", f"{path} has no globalLayers list")
    return dict(plan)


def apply_plan(cfg: LocalAttnConfig, plan: Mapping[str, Any]) -> LocalAttnConfig:
    """The plan's global layers replace the configured ones (calibration knows better than a rule)."""
    from dataclasses import replace

    try:
        layers = _global_layers({"indices": list(plan["globalLayers"])})
    except ConfigError as e:
        raise ConfigError("planFile", f"globalLayers: {e}") from e
    return replace(cfg, global_layers=layers)


def load(env: Mapping[str, str] | None = None) -> LocalAttnConfig | None:
    """The configuration from `LOCALATTN_CONFIG_JSON` (wins) or the file `LOCALATTN_CONFIG`; None if neither."""
    env = os.environ if env is None else env
    inline = env.get(ENV_JSON)
    if inline:
        try:
            obj = json.loads(inline)
        except json.JSONDecodeError as e:
            raise ConfigError(ENV_JSON, f"not valid JSON: {e}") from e
        return parse(obj)
    path = env.get(ENV_FILE)
    if path:
        try:
            text = Path(path).read_text()
        except OSError as e:
            raise ConfigError(ENV_FILE, f"cannot read {path}: {e.strerror or e}") from e
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(ENV_FILE, f"{path} is not valid JSON: {e}") from e
        return parse(obj)
    return None
