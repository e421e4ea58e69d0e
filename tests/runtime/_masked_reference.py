"""The dense-masked reference forward the runtime tests compare against: transformers' own Llama with an
attention function (registered through `AttentionInterface`) that adds an explicit `-inf` mask built here from
the documented rule (docs/runtime.md: key j is visible to query i iff j <= i and (j < S or i - j < W); global
layers: j <= i). It shares no code with the plugin, the kernels or `localattn_runtime.calibrate`: plain
matmul + softmax, no SDPA, no reuse of layer inputs. Loaded by path (runpy) from the tests."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

ATTENTION = "localattn_test_dense_masked"
_mask: dict[str, Any] = {}


def _dense_masked_attention(module: Any, query: Any, key: Any, value: Any, attention_mask: Any,
                            scaling: float, dropout: float = 0.0, **_: Any) -> tuple[Any, Any]:
    """softmax(QK^T * scale + mask) V with the sink + window mask of `module.layer_idx` (B=1, no padding)."""
    import torch

    groups = query.shape[1] // key.shape[1]
    k = key.repeat_interleave(groups, dim=1)
    v = value.repeat_interleave(groups, dim=1)
    q_len, k_len = query.shape[2], k.shape[2]
    i = torch.arange(k_len - q_len, k_len)[:, None]
    j = torch.arange(k_len)[None, :]
    visible = j <= i
    if module.layer_idx not in _mask["global"]:
        visible &= (j < _mask["sinks"]) | (i - j < _mask["window"])
    scores = torch.matmul(query, k.transpose(2, 3)) * scaling
    scores = scores.masked_fill(~visible, float("-inf"))
    out = torch.matmul(scores.softmax(-1), v)
    return out.transpose(1, 2).contiguous(), None


def load(model_dir: Path) -> Any:
    """The model in float32 with the dense-masked attention (load once, then call `logprobs` per mask)."""
    import torch
    from transformers import AttentionInterface, AutoModelForCausalLM

    AttentionInterface.register(ATTENTION, _dense_masked_attention)
    return AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32,
                                                attn_implementation=ATTENTION).eval()


def logprobs(model: Any, ids: Sequence[int], window: int, sinks: int, global_layers: set[int]) -> list[float]:
    """logprob of ids[p] given ids[:p], for p = 1 .. len(ids) - 1, under the (window, sinks, global) mask."""
    import torch

    _mask.update(window=window, sinks=sinks, **{"global": set(global_layers)})
    with torch.no_grad():
        logp = model(input_ids=torch.tensor([list(ids)])).logits[0, :-1].log_softmax(-1)
    return [float(x) for x in logp.gather(-1, torch.tensor(list(ids[1:]))[:, None])[:, 0]]
