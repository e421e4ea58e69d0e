"""Calibration ("dynamic scope"): which layers must stay global for a given window and sink count.

Training-free, two measures (HF transformers on sample text):
- `gap` (the default): per layer, the share of the local-vs-full loss gap that making this one layer global
  closes, on the sample text itself and on a copy of it with one stretch repeated beyond the window (the
  long-range reading local attention breaks). What a layer is for is measured on the output, where it matters.
- `mass` (cheap, one full-attention forward per sample): the share of attention mass that falls outside sinks +
  window, what a local layer would drop. A proxy: dropped mass is not changed output, and on SmolLM2 it picks
  the layers whose globality hurts (docs/calibration.md).
The K best-scoring layers stay global. The decision (`choose_global_layers`, `make_plan`, `gap_closed`) is pure;
`measure_outside_mass` and `measure_gap_closed` are the only parts that run a model.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

#: The measures `calibrate` knows (`--method`).
METHODS = ("gap", "mass")
#: Tokens repeated beyond the window in a `gap` copy sample (at most an eighth of the sample).
COPY_TOKENS = 128


class LayerScore(Protocol):
    """One layer's measure: higher `score` = keeping it global matters more; `row()` is its plan entry."""

    @property
    def index(self) -> int: ...

    @property
    def score(self) -> float: ...

    def row(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class LayerMass:
    index: int
    outside_mass: float

    @property
    def score(self) -> float:
        return self.outside_mass

    def row(self) -> dict[str, Any]:
        return {"index": self.index, "outsideMass": round(self.outside_mass, 6)}


@dataclass(frozen=True)
class LayerGain:
    """How much of the local-vs-full loss gap (mean NLL, nats) this layer closes when it alone is global, on
    natural text and on long-range copies: `gap_closed` is the mean of the two shares."""

    index: int
    text_gain: float
    copy_gain: float
    text_gap: float
    copy_gap: float

    @property
    def score(self) -> float:
        return gap_closed(self.text_gain, self.text_gap, self.copy_gain, self.copy_gap)

    def row(self) -> dict[str, Any]:
        return {"index": self.index, "gapClosed": round(self.score, 6), "textGain": round(self.text_gain, 6),
                "copyGain": round(self.copy_gain, 6)}


def gap_closed(text_gain: float, text_gap: float, copy_gain: float, copy_gap: float) -> float:
    """Mean over the two kinds of sample of gain / gap; a kind whose gap is not positive (local attention loses
    nothing there) does not count, so a sample set the window already covers cannot rank layers by noise."""
    shares = [g / gap for g, gap in ((text_gain, text_gap), (copy_gain, copy_gap)) if gap > 1e-9]
    return sum(shares) / len(shares) if shares else 0.0


def outside_fraction(attn: Any, window: int, sinks: int) -> Any:
    """Per head, mean over queries of the attention mass outside sinks + window: `attn` is [batch, heads, q, k].

    Only queries that have something outside (position >= sinks + window) count, so a long sample is not
    diluted by the early positions where local and full attention coincide. Returns a [heads] tensor.
    """
    import torch

    from localattn_kernels import reference

    n_q, n_k = attn.shape[-2], attn.shape[-1]
    positions = torch.arange(n_k - n_q, n_k)
    inside = reference.local_mask(positions, n_k, window=window, sinks=sinks)
    rows = positions >= sinks + window
    if not bool(rows.any()):
        raise ValueError(f"sample of {n_k} tokens is too short for window {window} + {sinks} sinks")
    outside = (attn.float() * (~inside)).sum(-1)  # [b, h, q]
    return outside[..., rows].mean(dim=(0, -1))


def choose_global_layers(masses: Sequence[LayerScore], budget: int) -> list[int]:
    """The `budget` layers with the highest score (ties: lower index), sorted."""
    if budget < 0:
        raise ValueError(f"budget must be >= 0, got {budget}")
    if budget > len(masses):
        raise ValueError(f"budget {budget} exceeds the model's {len(masses)} layers")
    ranked = sorted(masses, key=lambda m: (-m.score, m.index))
    return sorted(m.index for m in ranked[:budget])


def make_plan(model: str, window: int, sinks: int, budget: int, masses: Sequence[LayerScore]) -> dict[str, Any]:
    """The plan file's content (read by the plugin through `planFile`); `method` names the measure."""
    plan: dict[str, Any] = {
        "model": model,
        "windowSize": window,
        "sinkTokens": sinks,
        "budget": budget,
        "globalLayers": choose_global_layers(masses, budget),
        "layers": [m.row() for m in masses],
    }
    gains = [m for m in masses if isinstance(m, LayerGain)]
    if gains:  # the gaps the shares are of: local minus full mean NLL (nats per scored token)
        plan["method"] = "gap"
        plan["gap"] = {"text": round(gains[0].text_gap, 6), "copy": round(gains[0].copy_gap, 6)}
    return plan


def format_table(plan: dict[str, Any]) -> str:
    """The per-layer table `localattn calibrate` prints."""
    chosen = set(plan["globalLayers"])
    lines = [f"window={plan['windowSize']} sinks={plan['sinkTokens']} budget={plan['budget']}"]
    if plan.get("method") == "gap":
        lines.append(f"local - full NLL: text {plan['gap']['text']:.4f}, copy {plan['gap']['copy']:.4f} nats/token")
        lines.append(f"{'layer':>5}  {'gap closed':>10}  {'text gain':>10}  {'copy gain':>10}  decision")
        for row in plan["layers"]:
            decision = "global" if row["index"] in chosen else "local"
            lines.append(f"{row['index']:>5}  {row['gapClosed']:>10.4f}  {row['textGain']:>10.5f}  "
                         f"{row['copyGain']:>10.5f}  {decision}")
        return "\n".join(lines)
    lines.append(f"{'layer':>5}  {'outside mass':>12}  decision")
    for row in plan["layers"]:
        decision = "global" if row["index"] in chosen else "local"
        lines.append(f"{row['index']:>5}  {row['outsideMass']:>12.4f}  {decision}")
    return "\n".join(lines)


def sample_sequences(tok: Any, count: int, length: int) -> list[list[int]]:
    """`count` held-out sequences of `length` tokens (BOS first, as vLLM prompts), never seen in training."""
    from localattn_runtime import tinymodel

    bos = tok.convert_tokens_to_ids(tinymodel.BOS)
    eos = tok.convert_tokens_to_ids(tinymodel.EOS)
    stream: list[int] = []
    need = count * (length - 1)
    for text in tinymodel.read_texts(held_out=True):
        stream.extend(tok(text, add_special_tokens=False)["input_ids"])
        stream.append(eos)
        if len(stream) >= need:
            break
    if len(stream) < need:
        raise ValueError(f"held-out text has only {len(stream)} tokens, need {need}")
    return [[bos, *stream[k * (length - 1) : (k + 1) * (length - 1)]] for k in range(count)]


def texts_to_sequences(tok: Any, texts: Iterable[str], length: int) -> list[list[int]]:
    """User-supplied sample texts, tokenized (with BOS) and cut to `length` tokens."""
    return [tok(t)["input_ids"][:length] for t in texts]


def measure_outside_mass(model_dir: str | Path, sequences: Sequence[Sequence[int]], window: int,
                         sinks: int) -> list[LayerMass]:
    """Run the model once per sequence with full attention; average each layer's outside mass over heads."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32,
                                                 attn_implementation="eager")
    model.eval()
    totals: list[float] = []
    with torch.no_grad():
        for seq in sequences:
            out = model(input_ids=torch.tensor([list(seq)]), output_attentions=True)
            per_layer = [float(outside_fraction(a, window, sinks).mean()) for a in out.attentions]
            totals = per_layer if not totals else [t + p for t, p in zip(totals, per_layer, strict=True)]
    return [LayerMass(i, t / len(sequences)) for i, t in enumerate(totals)]


def copy_sample(seq: Sequence[int], window: int, sinks: int) -> tuple[list[int], int]:
    """`seq` with its last stretch replaced by an earlier one, repeated from beyond the window (as a copy or a
    lookup would read it): the sample and the position of the repeat's first token (scored after it)."""
    n = len(seq)
    count = min(COPY_TOKENS, n // 8)
    source = sinks + 8  # past the sinks, which local attention keeps anyway
    if count < 2 or (n - count) - source <= window:
        raise ValueError(f"sample of {n} tokens is too short to repeat a stretch beyond window {window} "
                         f"+ {sinks} sinks")
    return [*seq[: n - count], *seq[source : source + count]], n - count


def measure_gap_closed(model_dir: str | Path, sequences: Sequence[Sequence[int]], window: int,
                       sinks: int) -> list[LayerGain]:
    """Per layer, the loss gain of making it alone global (all other layers sinks + window), on each sequence
    (positions whose query sees beyond the window) and on its `copy_sample` (the repeated tokens after the
    first), with the local-vs-full gaps. A dense-masked forward: the inputs of every layer in the all-local pass
    are kept, so "layer l global" reruns only layers l.. (about half a forward per layer)."""
    import torch
    import torch.nn.functional as F
    from transformers import AttentionInterface, AutoModelForCausalLM

    from localattn_kernels import reference

    masks: dict[int, tuple[Any, Any]] = {}
    global_now: set[int] = set()

    def masked_attention(module: Any, query: Any, key: Any, value: Any, attention_mask: Any, scaling: float,
                         dropout: float = 0.0, **_: Any) -> tuple[Any, None]:
        n = query.shape[2]
        if n not in masks:
            positions = torch.arange(n)
            masks[n] = (reference.local_mask(positions, n, window=n, sinks=0),  # a window of n: causal
                        reference.local_mask(positions, n, window=window, sinks=sinks))
        mask = masks[n][0] if module.layer_idx in global_now else masks[n][1]
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=scaling, enable_gqa=True)
        return out.transpose(1, 2).contiguous(), None

    AttentionInterface.register("localattn_calibrate_masked", masked_attention)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32,
                                                 attn_implementation="localattn_calibrate_masked").eval()
    inner: Any = getattr(model, "model", None)
    if not all(hasattr(inner, a) for a in ("layers", "embed_tokens", "rotary_emb", "norm")):
        raise ValueError(f"the gap measure needs a Llama-style decoder (model.layers, rotary_emb); "
                         f"{type(model).__name__} has none: use --method mass")
    num_layers = len(inner.layers)

    def nll_from(h: Any, start: int, pos: Any, ids: Sequence[int], first: int, last: int) -> float:
        for layer in inner.layers[start:]:
            h = layer(h, position_embeddings=pos)
        logits = model.lm_head(inner.norm(h))[0, first - 1 : last - 1].float()
        return float(F.cross_entropy(logits, torch.tensor(list(ids[first:last]))))

    sums = {"text": [0.0] * num_layers, "copy": [0.0] * num_layers}
    gaps = {"text": 0.0, "copy": 0.0}
    with torch.no_grad():
        for seq in sequences:
            if len(seq) <= sinks + window + 1:
                raise ValueError(f"sample of {len(seq)} tokens is too short for window {window} + {sinks} sinks")
            repeated, at = copy_sample(seq, window, sinks)
            for kind, ids, first in (("text", list(seq), sinks + window + 1), ("copy", repeated, at + 1)):
                x = torch.tensor([ids])
                embedded = inner.embed_tokens(x)
                pos = inner.rotary_emb(embedded, torch.arange(len(ids))[None])
                global_now.clear()
                global_now.update(range(num_layers))
                full = nll_from(embedded, 0, pos, ids, first, len(ids))
                global_now.clear()
                inputs, h = [], embedded
                for layer in inner.layers:
                    inputs.append(h)
                    h = layer(h, position_embeddings=pos)
                local = nll_from(h, num_layers, pos, ids, first, len(ids))
                gaps[kind] += (local - full) / len(sequences)
                for index in range(num_layers):
                    global_now.clear()
                    global_now.add(index)
                    gain = local - nll_from(inputs[index], index, pos, ids, first, len(ids))
                    sums[kind][index] += gain / len(sequences)
    return [LayerGain(i, sums["text"][i], sums["copy"][i], gaps["text"], gaps["copy"]) for i in range(num_layers)]


def calibrate(model_dir: str | Path, window: int, sinks: int, budget: int, *, samples: int = 4,
              length: int = 1024, texts: Iterable[str] | None = None, method: str = "gap") -> dict[str, Any]:
    """Measure on held-out stdlib text (or `texts`) and return the plan."""
    from localattn_runtime import tinymodel

    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    if sinks < 0:
        raise ValueError(f"sinks must be >= 0, got {sinks}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    tok = tinymodel.load_tokenizer(model_dir)
    seqs = texts_to_sequences(tok, texts, length) if texts is not None else sample_sequences(tok, samples, length)
    measure = measure_gap_closed if method == "gap" else measure_outside_mass
    scores: Sequence[LayerScore] = measure(model_dir, seqs, window, sinks)
    return make_plan(str(model_dir), window, sinks, budget, scores)


def write_plan(plan: dict[str, Any], path: str | Path) -> Path:
    """Write the plan and check that the plugin's config parser accepts it."""
    from localattn_runtime import config

    out = Path(path)
    out.write_text(json.dumps(plan, indent=2) + "\n")
    cfg = config.parse({"windowSize": plan["windowSize"], "sinkTokens": plan["sinkTokens"],
                        "planFile": str(out)})
    cfg.validate_for_model(len(plan["layers"]))
    return out
