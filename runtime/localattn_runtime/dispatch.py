"""What runs where, shared by the CPU and GPU backends: is a vLLM attention layer local (`LocalLayerMixin`), and
which of a step's queries attend locally (the per-token minContextLength rule of `layers`, applied to a batch)."""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from localattn_runtime import layers

if TYPE_CHECKING:
    from localattn_runtime.config import LocalAttnConfig


def model_num_layers(vllm_config: Any) -> int:
    return int(vllm_config.model_config.hf_text_config.num_hidden_layers)


def own_window_layers(vllm_config: Any) -> frozenset[int]:
    """Layers with the model's own sliding window (vLLM's attention modules, registered as the model is built)."""
    ctx = getattr(getattr(vllm_config, "compilation_config", None), "static_forward_context", None) or {}
    out = set()
    for name, module in ctx.items():
        idx = layers.layer_index(name)
        if getattr(module, "sliding_window", None) is not None and idx is not None:
            out.add(idx)
    return frozenset(out)


def active_config(vllm_config: Any) -> LocalAttnConfig | None:
    """The enabled configuration, validated against this model (raises ConfigError if it does not fit)."""
    from localattn_runtime.plugin import active_config as _active

    cfg = _active()
    if cfg is None or not cfg.enabled:
        return None
    cfg.validate_for_model(model_num_layers(vllm_config))
    return cfg


def local_layer_config(attn_module: Any, vllm_config: Any) -> LocalAttnConfig | None:
    """The config if `attn_module` (a vLLM `Attention`) is a local decoder layer run by one of our backends."""
    if not getattr(getattr(attn_module, "impl", None), "localattn_impl", False):
        return None
    if getattr(attn_module, "attn_type", "decoder") != "decoder":  # AttentionType is a str enum
        return None
    if getattr(attn_module, "sliding_window", None) is not None:
        return None  # the model's own sliding window wins; windows are not stacked
    cfg = active_config(vllm_config)
    if cfg is None:
        return None
    name = attn_module.layer_name
    idx = layers.layer_index(name)
    if idx is None:  # guessing "global" would silently give a layer the wrong attention
        raise NotImplementedError(f"localattn: cannot tell which decoder layer {name!r} is (expected a name with "
                                  f"'layers.<index>.'); this model's layer naming is not supported")
    n = model_num_layers(vllm_config)
    conflict = layers.own_window_conflict(n, cfg.global_layer_set(n), own_window_layers(vllm_config))
    if conflict is not None:
        from localattn_runtime.config import ConfigError

        raise ConfigError("globalLayers", conflict)
    if cfg.is_global(idx, n):
        return None
    kv_dtype = getattr(attn_module, "kv_cache_dtype", "auto")
    if kv_dtype != "auto":  # checked when vLLM asks for the KV cache spec, i.e. at startup
        raise NotImplementedError(f"localattn: local layers need an unquantized KV cache (kvCacheDtype auto), "
                                  f"got {kv_dtype!r} for {attn_module.layer_name}")
    return cfg


class LocalLayerMixin:
    """Lazy "is this layer local?" for our attention impls; list it before vLLM's impl class in the bases.

    vLLM builds an impl before the impl knows its layer, so the answer is resolved at the first forward (which
    passes the layer) and memoised. The vLLM config is captured at construction: `get_current_vllm_config()`
    is only set while the model is built, not during forward.
    """

    localattn_impl = True  # marks our impls for `local_layer_config`

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        from vllm.config import get_current_vllm_config

        self._vllm_config = get_current_vllm_config()
        self._local: bool | None = None
        self._cfg: LocalAttnConfig | None = None

    @abstractmethod
    def _unsupported_by_backend(self) -> str | None:
        """Why this backend cannot run this layer locally (a quantised KV cache, say), or None."""

    def _unsupported(self) -> str | None:
        """Why the local kernels cannot stand in for this layer's attention, or None.

        They compute plain scaled softmax attention; a layer that also asks vLLM's kernel for ALiBi, a logits
        soft cap or learned per-head attention sinks (gpt-oss) would silently lose them, so it is refused.
        """
        if getattr(self, "alibi_slopes", None) is not None:
            return "localattn: local layers do not support ALiBi (this model's attention uses alibi_slopes)"
        if getattr(self, "logits_soft_cap", None):
            return "localattn: local layers do not support a logits soft cap (this model's attention sets one)"
        if getattr(self, "sinks", None) is not None:
            return "localattn: local layers do not support learned attention sinks (this model's attention has them)"
        return self._unsupported_by_backend()

    def _is_local(self, layer: Any) -> bool:
        if self._local is None:
            self._cfg = local_layer_config(layer, self._vllm_config)
            self._local = self._cfg is not None
            reason = self._unsupported() if self._local else None
            if reason is not None:
                raise NotImplementedError(reason)
        return self._local


@dataclass
class Part:
    """Some of a step's queries as a batch of their own: rows `index` of the step's query tensor."""

    index: torch.Tensor
    rows: torch.Tensor  # the requests they belong to (rows of block_table / seq_lens)
    query_start_loc: torch.Tensor
    seq_lens: torch.Tensor
    max_query_len: int


@dataclass
class QuerySplit:
    """`full` / `local`: None when no query of the step is in that part; `all_local`: no split needed."""

    full: Part | None
    local: Part | None

    @property
    def all_local(self) -> bool:
        return self.full is None and self.local is not None


def cumsum0(x: torch.Tensor) -> torch.Tensor:
    out = torch.zeros(x.shape[0] + 1, dtype=torch.int64, device=x.device)
    torch.cumsum(x, 0, out=out[1:])
    return out


def ranges(starts: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Concatenated `arange(s, s + c)` for each (s, c)."""
    total = int(counts.sum())
    offsets = torch.arange(total, device=counts.device) - torch.repeat_interleave(cumsum0(counts)[:-1], counts)
    return torch.repeat_interleave(starts, counts) + offsets


def _part(starts: torch.Tensor, counts: torch.Tensor, seq_lens: torch.Tensor) -> Part | None:
    rows = (counts > 0).nonzero().flatten()
    if rows.numel() == 0:
        return None
    c = counts[rows]
    return Part(index=ranges(starts[rows], c), rows=rows, query_start_loc=cumsum0(c), seq_lens=seq_lens[rows],
                max_query_len=int(c.max()))


def split_queries(query_start_loc: torch.Tensor, seq_lens: torch.Tensor, min_context_length: int) -> QuerySplit:
    """Split a step's queries: those at positions < minContextLength - 1 attend fully, the rest locally.

    Request r's queries are the last q_r positions of its seq_lens[r] tokens; per request the full ones come
    first, so each part is again a valid varlen batch (with `seq_lens` cut at the part's last query).
    """
    n = int(seq_lens.shape[0])
    qsl = query_start_loc[: n + 1].to(torch.int64)
    q_lens = qsl[1:] - qsl[:-1]
    seq = seq_lens[:n].to(torch.int64)
    ctx = seq - q_lens
    first_local = layers.first_local_position(min_context_length)
    n_full = torch.minimum((first_local - ctx).clamp(min=0), q_lens)
    n_local = q_lens - n_full
    if int(n_full.sum()) == 0:
        return QuerySplit(full=None, local=_part(qsl[:-1], q_lens, seq))
    return QuerySplit(full=_part(qsl[:-1], n_full, ctx + n_full), local=_part(qsl[:-1] + n_full, n_local, seq))
