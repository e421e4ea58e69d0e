"""Calibration ("dynamic scope"): which layers must stay global for a given window and sink count.

Training-free: run the model with full attention (HF transformers, eager attention, `output_attentions`) on
sample text and measure, per layer, the share of attention mass that falls outside sinks + window — what a
local layer would drop. The K layers that drop the most stay global. The decision (`choose_global_layers`,
`make_plan`) is pure; `measure_outside_mass` is the only part that runs a model.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class LayerMass:
    index: int
    outside_mass: float


def outside_fraction(attn: Any, window: int, sinks: int) -> Any:
    """Per head, mean over queries of the attention mass outside sinks + window: `attn` is [batch, heads, q, k].

    Only queries that have something outside (position >= sinks + window) count, so a long sample is not
    diluted by the early positions where local and full attention coincide. Returns a [heads] tensor.
    """
    import torch

    n_q, n_k = attn.shape[-2], attn.shape[-1]
    i = torch.arange(n_k - n_q, n_k)[:, None]
    j = torch.arange(n_k)[None, :]
    inside = (j < sinks) | ((j > i - window) & (j <= i))
    rows = (i[:, 0] >= sinks + window)
    if not bool(rows.any()):
        raise ValueError(f"sample of {n_k} tokens is too short for window {window} + {sinks} sinks")
    outside = (attn.float() * (~inside)).sum(-1)  # [b, h, q]
    return outside[..., rows].mean(dim=(0, -1))


def choose_global_layers(masses: Sequence[LayerMass], budget: int) -> list[int]:
    """The `budget` layers with the most mass outside sinks + window (ties: lower index), sorted."""
    if budget < 0:
        raise ValueError(f"budget must be >= 0, got {budget}")
    if budget > len(masses):
        raise ValueError(f"budget {budget} exceeds the model's {len(masses)} layers")
    ranked = sorted(masses, key=lambda m: (-m.outside_mass, m.index))
    return sorted(m.index for m in ranked[:budget])


def make_plan(model: str, window: int, sinks: int, budget: int, masses: Sequence[LayerMass]) -> dict[str, Any]:
    """The plan file's content (read by the plugin through `planFile`)."""
    return {
        "model": model,
        "windowSize": window,
        "sinkTokens": sinks,
        "budget": budget,
        "globalLayers": choose_global_layers(masses, budget),
        "layers": [{"index": m.index, "outsideMass": round(m.outside_mass, 6)} for m in masses],
    }


def format_table(plan: dict[str, Any]) -> str:
    """The per-layer table `localattn calibrate` prints."""
    chosen = set(plan["globalLayers"])
    lines = [f"window={plan['windowSize']} sinks={plan['sinkTokens']} budget={plan['budget']}",
             f"{'layer':>5}  {'outside mass':>12}  decision"]
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


def calibrate(model_dir: str | Path, window: int, sinks: int, budget: int, *, samples: int = 4,
              length: int = 1024, texts: Iterable[str] | None = None) -> dict[str, Any]:
    """Measure on held-out stdlib text (or `texts`) and return the plan."""
    from localattn_runtime import tinymodel

    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    if sinks < 0:
        raise ValueError(f"sinks must be >= 0, got {sinks}")
    tok = tinymodel.load_tokenizer(model_dir)
    seqs = texts_to_sequences(tok, texts, length) if texts is not None else sample_sequences(tok, samples, length)
    masses = measure_outside_mass(model_dir, seqs, window, sinks)
    return make_plan(str(model_dir), window, sinks, budget, masses)


def write_plan(plan: dict[str, Any], path: str | Path) -> Path:
    """Write the plan and check that the plugin's config parser accepts it."""
    from localattn_runtime import config

    out = Path(path)
    out.write_text(json.dumps(plan, indent=2) + "\n")
    cfg = config.parse({"windowSize": plan["windowSize"], "sinkTokens": plan["sinkTokens"],
                        "planFile": str(out)})
    cfg.validate_for_model(len(plan["layers"]))
    return out
