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
import weakref
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


class MaskedDecoder:
    """A Llama-style HF model run layer by layer with dense masks: causal for the layers in `global_now`, sinks +
    window for the others. Per sample (`kind`, ids, first scored position) it gives the mean NLL of the scored
    tokens; `inputs` keeps every layer's input of one pass, so a pass that differs only from layer l on reruns
    layers l.. (making layer l global does not change what layers before it compute)."""

    def __init__(self, model_dir: str | Path, window: int, sinks: int) -> None:
        import torch
        import torch.nn.functional as F
        from transformers import AttentionInterface, AutoModelForCausalLM

        from localattn_kernels import reference

        self.window, self.sinks = window, sinks
        # transformers' attention registry is process-wide and keeps what it is given: the function holds only
        # this set and the mask cache (never `self`, so the model goes with the decoder), and the cache is
        # emptied when the decoder goes.
        global_now: set[int] = set()
        masks: dict[int, tuple[Any, Any]] = {}
        self.global_now = global_now
        weakref.finalize(self, masks.clear)

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

        name = f"localattn_calibrate_masked_{id(self)}"  # looked up per call: one name per decoder's own masks
        AttentionInterface.register(name, masked_attention)
        self.model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32,
                                                          attn_implementation=name).eval()
        inner: Any = getattr(self.model, "model", None)
        if not all(hasattr(inner, a) for a in ("layers", "embed_tokens", "rotary_emb", "norm")):
            raise ValueError(f"the gap measure needs a Llama-style decoder (model.layers, rotary_emb); "
                             f"{type(self.model).__name__} has none: use --method mass")
        self.inner: Any = inner
        self.num_layers = len(inner.layers)

    def samples(self, sequences: Sequence[Sequence[int]]) -> list[tuple[str, list[int], int]]:
        """Each sequence as text (scored where queries see beyond the window) and as its `copy_sample` (scored on
        the repeated tokens after the first)."""
        out: list[tuple[str, list[int], int]] = []
        for seq in sequences:
            if len(seq) <= self.sinks + self.window + 1:
                raise ValueError(f"sample of {len(seq)} tokens is too short for window {self.window} + "
                                 f"{self.sinks} sinks")
            repeated, at = copy_sample(seq, self.window, self.sinks)
            out += [("text", list(seq), self.sinks + self.window + 1), ("copy", repeated, at + 1)]
        return out

    def embed(self, ids: Sequence[int]) -> tuple[Any, Any]:
        import torch

        embedded = self.inner.embed_tokens(torch.tensor([list(ids)]))
        return embedded, self.inner.rotary_emb(embedded, torch.arange(len(ids))[None])

    def nll(self, global_layers: Iterable[int], h: Any, pos: Any, ids: Sequence[int], first: int, start: int = 0,
            inputs: list[Any] | None = None) -> float:
        """Mean NLL of ids[first:] with `global_layers` global, running layers start.. on `h` (their input);
        appends each layer's input to `inputs` when given."""
        import torch
        import torch.nn.functional as F

        self.global_now.clear()
        self.global_now.update(global_layers)
        for layer in self.inner.layers[start:]:
            if inputs is not None:
                inputs.append(h)
            h = layer(h, position_embeddings=pos)
        logits = self.model.lm_head(self.inner.norm(h))[0, first - 1 : len(ids) - 1].float()
        return float(F.cross_entropy(logits, torch.tensor(list(ids[first:]))))


def _kind_weights(samples: Sequence[tuple[str, list[int], int]]) -> dict[str, float]:
    """Each sample's weight in its kind's mean (a kind with no sample weighs nothing)."""
    counts = {k: sum(1 for kind, _, _ in samples if kind == k) for k in ("text", "copy")}
    return {k: 1 / n if n else 0.0 for k, n in counts.items()}


def _gains_over(probe: MaskedDecoder, samples: Sequence[tuple[str, list[int], int]], base: frozenset[int],
                candidates: Sequence[int]) -> tuple[dict[str, float], dict[str, dict[int, float]]]:
    """Per kind, the mean NLL with `base` global and, per candidate layer, how much adding it lowers that."""
    weight = _kind_weights(samples)
    base_nll = {"text": 0.0, "copy": 0.0}
    gains: dict[str, dict[int, float]] = {"text": dict.fromkeys(candidates, 0.0), "copy": dict.fromkeys(candidates, 0.0)}
    for kind, ids, first in samples:
        embedded, pos = probe.embed(ids)
        inputs: list[Any] = []
        here = probe.nll(base, embedded, pos, ids, first, inputs=inputs)
        base_nll[kind] += here * weight[kind]
        for index in candidates:
            with_it = probe.nll(base | {index}, inputs[index], pos, ids, first, start=index)
            gains[kind][index] += (here - with_it) * weight[kind]
    return base_nll, gains


def _full_nll(probe: MaskedDecoder, samples: Sequence[tuple[str, list[int], int]]) -> dict[str, float]:
    weight = _kind_weights(samples)
    full = {"text": 0.0, "copy": 0.0}
    for kind, ids, first in samples:
        embedded, pos = probe.embed(ids)
        full[kind] += probe.nll(range(probe.num_layers), embedded, pos, ids, first) * weight[kind]
    return full


def measure_gap_closed(model_dir: str | Path, sequences: Sequence[Sequence[int]], window: int,
                       sinks: int) -> list[LayerGain]:
    """Per layer, the loss gain of making it alone global (all other layers sinks + window), on each sequence
    (positions whose query sees beyond the window) and on its `copy_sample` (the repeated tokens after the
    first), with the local-vs-full gaps. A dense-masked forward (`MaskedDecoder`): "layer l global" reruns only
    layers l.. of the all-local pass (about half a forward per layer)."""
    import torch

    probe = MaskedDecoder(model_dir, window, sinks)
    with torch.no_grad():
        return single_layer_gains(probe, probe.samples(sequences))


def single_layer_gains(probe: MaskedDecoder, samples: Sequence[tuple[str, list[int], int]]) -> list[LayerGain]:
    """`measure_gap_closed` on a decoder already loaded (benchmarks measure several sample sets with one)."""
    full = _full_nll(probe, samples)
    local, gains = _gains_over(probe, samples, frozenset(), range(probe.num_layers))
    return [LayerGain(i, gains["text"][i], gains["copy"][i], local["text"] - full["text"],
                      local["copy"] - full["copy"]) for i in range(probe.num_layers)]


def greedy_order(probe: MaskedDecoder, samples: Sequence[tuple[str, list[int], int]], budget: int,
                 pool: int | None = None) -> tuple[list[LayerGain], list[LayerGain]]:
    """Layers chosen one at a time, each the one that closes most of the remaining gap *given those already
    global* (single-layer gains ignore how layers interact: two layers that read the same long-range facts are
    worth one). Step 1 is the single-layer measure; later steps try only the `pool` best single layers (default
    3 x budget), so a step costs a few forwards, not L / 2. Returns the single-layer gains and the steps in
    order, each step's gains being the added layer's over the set before it (so the steps' shares add up)."""
    if budget > probe.num_layers:
        raise ValueError(f"budget {budget} exceeds the model's {probe.num_layers} layers")
    singles = single_layer_gains(probe, samples)
    gap = {"text": singles[0].text_gap, "copy": singles[0].copy_gap}
    ranked = [g.index for g in sorted(singles, key=lambda g: (-g.score, g.index))]
    candidates = ranked[: max(budget, pool if pool is not None else 3 * budget)]
    steps: list[LayerGain] = []
    current = singles
    while len(steps) < budget:
        steps.append(max(current, key=lambda g: (g.score, -g.index)))  # `current` holds only layers not chosen
        if len(steps) < budget:
            base = frozenset(s.index for s in steps)
            _, gains = _gains_over(probe, samples, base, [i for i in candidates if i not in base])
            current = [LayerGain(i, gains["text"][i], gains["copy"][i], gap["text"], gap["copy"])
                       for i in gains["text"]]
    return singles, steps


def measure_greedy(model_dir: str | Path, sequences: Sequence[Sequence[int]], window: int, sinks: int,
                   budget: int, pool: int | None = None) -> tuple[list[LayerGain], list[LayerGain]]:
    """`greedy_order` on the gap measure's samples (each sequence as text and as its copy sample)."""
    import torch

    probe = MaskedDecoder(model_dir, window, sinks)
    with torch.no_grad():
        return greedy_order(probe, probe.samples(sequences), budget, pool)


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
