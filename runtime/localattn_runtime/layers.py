"""Pure decisions shared by the attention backend and the KV manager: which layer is local, which tokens attend
locally, which KV blocks a sequence still needs. No vLLM or torch imports, so each rule is unit-tested alone.

Semantics (see docs/runtime.md): on a local layer the query at position i sees key j iff j < S (sinks) or
i - W < j <= i (window). A query whose context (i + 1 tokens) is shorter than `minContextLength` sees every
earlier key. The rule is per token, so results do not depend on how vLLM batches or chunks a prefill, and a
whole sequence shorter than minContextLength runs every layer with full attention.
"""

from __future__ import annotations

import re

_LAYER_RE = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def layer_index(layer_name: str) -> int | None:
    """`model.layers.<i>.self_attn.attn` -> i (None when the name has no layer index)."""
    m = _LAYER_RE.search(layer_name)
    return int(m.group(1)) if m else None


def first_local_position(min_context_length: int) -> int:
    """The first query position that attends locally: position i has i + 1 tokens of context."""
    return max(min_context_length - 1, 0)


def num_full_queries(ctx_before: int, num_queries: int, min_context_length: int) -> int:
    """How many of a request's scheduled queries (positions ctx_before ..) still attend fully."""
    return min(max(first_local_position(min_context_length) - ctx_before, 0), num_queries)


def freeable_blocks(num_computed_tokens: int, *, window: int, sinks: int, min_context_length: int,
                    block_size: int, extra_retained: int = 0) -> tuple[int, int]:
    """The block range [start, end) no later query of the sequence can read, given `num_computed_tokens`.

    The next query sits at position c = num_computed_tokens and later ones further right, so keys below
    c - W + 1 are outside every future window. The first ceil(S / block_size) blocks hold the sinks and are
    kept. While queries still attend fully (c < first_local_position) nothing may be freed. `extra_retained`
    more tokens below the window stay too: vLLM's `extra_retained_tokens`, set for multi-token-prediction
    speculative decoding, which re-prefills that many trailing tokens and so needs their window.
    """
    c = num_computed_tokens
    sink_blocks = -(-sinks // block_size)
    if c < first_local_position(min_context_length):
        return sink_blocks, sink_blocks
    end = max(c - window + 1 - extra_retained, 0) // block_size
    return sink_blocks, max(end, sink_blocks)


def blocks_in_use(seq_len: int, *, window: int, sinks: int, min_context_length: int, block_size: int,
                  extra_retained: int = 0) -> int:
    """KV blocks a local layer holds for a sequence of `seq_len` tokens (what the manager keeps)."""
    total = -(-seq_len // block_size)
    start, end = freeable_blocks(seq_len, window=window, sinks=sinks, min_context_length=min_context_length,
                                 block_size=block_size, extra_retained=extra_retained)
    return total - max(min(end, total) - start, 0)


def admission_blocks(*, window: int, sinks: int, min_context_length: int, block_size: int,
                     max_in_flight_tokens: int, max_model_len: int) -> int:
    """Peak blocks one request may hold on a local layer: vLLM sizes the pool and admits requests by it.

    Like vLLM's sliding window (W - 1 retained tokens + the in-flight chunk + one block of misalignment), plus
    the sink blocks; before minContextLength is reached nothing is freed, so that prefix counts too.
    """
    retained = max(window - 1, first_local_position(min_context_length))
    tokens = min(retained + max_in_flight_tokens, max_model_len)
    blocks = -(-tokens // block_size) + 1 + -(-sinks // block_size)
    return min(blocks, -(-max_model_len // block_size))


def hit_needed_blocks(num_blocks: int, *, window: int, sinks: int, min_context_length: int, block_size: int,
                      lookahead_block: bool = False) -> tuple[int, int]:
    """A prefix-cache hit of `num_blocks` blocks on a local layer needs blocks [0, a) and [b, num_blocks).

    After the hit the next query sits at L = num_blocks * block_size (one block earlier when `lookahead_block`:
    EAGLE/MTP recomputes the hit's last block, so it is matched but not kept), so later queries read the sinks and
    the keys from L - W + 1 on; a query below minContextLength reads every key, so such a hit needs every block.
    Returns (a, b) with a <= b; a == b == num_blocks means every block is needed.
    """
    resumed = (num_blocks - int(lookahead_block)) * block_size
    if resumed < first_local_position(min_context_length):
        return num_blocks, num_blocks
    sink_end = min(-(-sinks // block_size), num_blocks)
    tail_start = max(max(resumed - window + 1, 0) // block_size, sink_end)
    return sink_end, tail_start


def own_window_conflict(num_layers: int, global_layers: frozenset[int], own_window_layers: frozenset[int]) -> str | None:
    """Why the plugin must refuse a model with its own sliding-window layers (Gemma 2/3 style), or None.

    Such a model keeps its windows (windows are not stacked) and its remaining full-attention layers are its
    global ones. With no global layer configured, the plugin would make every one of those local, leaving the
    model with no layer that sees the whole context: silently a different, worse model.
    """
    if not own_window_layers or global_layers:
        return None
    full = sorted(set(range(num_layers)) - own_window_layers)
    if not full:
        return None  # every layer has its own window (Mistral style): nothing is made local
    return (f"this model has its own sliding-window layers ({len(own_window_layers)} of {num_layers}); its "
            f"full-attention layers {full} are its global layers, and with no globalLayers configured all of "
            f"them would become local. Keep them global (globalLayers.indices: {full}) or list the ones to keep")
