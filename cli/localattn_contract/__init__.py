"""The operator <-> runtime contract: the schema of the plugin configuration, shared by both sides.

The operator (`localattn_operator.render.runtime_config`) writes this configuration and the vLLM plugin
(`localattn_runtime.config.parse`) reads it, but neither may import the other (.importlinter): the operator image
ships no torch or vLLM, and the plugin runs inside vLLM. So the one definition lives here, in a package both may
import: a JSON Schema file (package data, also usable by any other tool) plus the names both sides spell the same.
Stdlib only, and it imports no other localattn package.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from functools import cache
from importlib import resources
from typing import Any

SCHEMA_FILE = "runtime_config.schema.json"

#: The file name inside the pod's config directory, and the env variables the plugin reads it from.
CONFIG_FILE = "localattn.json"
ENV_FILE = "LOCALATTN_CONFIG"  # a path to the JSON file
ENV_JSON = "LOCALATTN_CONFIG_JSON"  # inline JSON (wins over the file)

#: The runtime's per-request latency histogram, labelled by prompt-length bucket, and that label's name.
BUCKET_LATENCY_METRIC = "localattn_request_latency_seconds"
BUCKET_LABEL = "length_bucket"


@cache
def schema() -> dict[str, Any]:
    """The JSON Schema of the runtime configuration."""
    return dict(json.loads(resources.files(__name__).joinpath(SCHEMA_FILE).read_text()))


def keys(path: str = "") -> frozenset[str]:
    """The field names allowed at `path` ("" for the top level, "probe", "globalLayers")."""
    node = schema()
    if not path:
        return frozenset(node["properties"])
    sub = node["properties"][path]
    if "oneOf" in sub:
        return frozenset(k for alt in sub["oneOf"] for k in alt["properties"])
    return frozenset(sub["properties"])


def default(path: str) -> Any:
    """The documented default of a dotted field (`windowSize`, `probe.maxTokens`)."""
    node = schema()
    parts = path.split(".")
    for part in parts[:-1]:
        node = node["properties"][part]
    return node["properties"][parts[-1]]["default"]


# --- prompt-length buckets: the runtime labels its histogram with these strings, the operator queries them ----


def default_bucket_boundaries(window_size: int) -> list[int]:
    """Below the window (local attention changes nothing), up to 4W, and far beyond."""
    return [window_size, 4 * window_size]


def bucket_labels(boundaries: Sequence[int]) -> list[str]:
    """The `length_bucket` label values, prompt tokens lo <= n < hi: [512, 2048] -> 0-512, 512-2048, 2048-inf."""
    edges = [0, *boundaries]
    return [f"{lo}-{hi}" for lo, hi in itertools.pairwise(edges)] + [f"{edges[-1]}-inf"]


def bucket_of(prompt_tokens: int, boundaries: Sequence[int]) -> str:
    """The `length_bucket` label of a prompt of `prompt_tokens` tokens (lo <= n < hi)."""
    labels = bucket_labels(boundaries)
    for edge, label in zip(boundaries, labels, strict=False):
        if prompt_tokens < edge:
            return label
    return labels[-1]
