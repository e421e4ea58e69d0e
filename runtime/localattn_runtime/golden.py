"""The probe's golden set: held-out text to score perplexity on, and prompts with known greedy completions.

Format (JSON, what the operator mounts): `{"perplexityTexts": [str, ...],
"exactMatch": [{"prompt": str, "expected": str}, ...]}`. `expected` is the model's own greedy completion under
full attention, so a healthy deployment reproduces it and a drop in exact match measures what local attention
changed — not what the model never knew.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class GoldenSetError(ValueError):
    """A malformed golden set; the message names the field."""


@dataclass(frozen=True)
class ExactMatchItem:
    prompt: str
    expected: str


@dataclass(frozen=True)
class GoldenSet:
    perplexity_texts: tuple[str, ...]
    exact_match: tuple[ExactMatchItem, ...]

    def to_json(self) -> dict[str, Any]:
        return {"perplexityTexts": list(self.perplexity_texts),
                "exactMatch": [{"prompt": i.prompt, "expected": i.expected} for i in self.exact_match]}


def parse(obj: Any) -> GoldenSet:
    """Validate the JSON object (errors name the offending field)."""
    if not isinstance(obj, dict):
        raise GoldenSetError(f"golden set: must be a JSON object, got {type(obj).__name__}")
    texts = obj.get("perplexityTexts", [])
    if not isinstance(texts, list) or not all(isinstance(t, str) and t for t in texts):
        raise GoldenSetError("golden set: perplexityTexts must be a list of non-empty strings")
    items = obj.get("exactMatch", [])
    if not isinstance(items, list):
        raise GoldenSetError("golden set: exactMatch must be a list")
    parsed = []
    for n, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get("prompt"), str) \
                or not isinstance(item.get("expected"), str) or not item["prompt"]:
            raise GoldenSetError(f"golden set: exactMatch[{n}] needs a non-empty 'prompt' and an 'expected' string")
        parsed.append(ExactMatchItem(item["prompt"], item["expected"]))
    if not texts and not parsed:
        raise GoldenSetError("golden set: both perplexityTexts and exactMatch are empty")
    return GoldenSet(tuple(texts), tuple(parsed))


def load(path: str | Path) -> GoldenSet:
    try:
        obj = json.loads(Path(path).read_text())
    except OSError as e:
        raise GoldenSetError(f"golden set: cannot read {path}: {e.strerror or e}") from e
    except json.JSONDecodeError as e:
        raise GoldenSetError(f"golden set: {path} is not valid JSON: {e}") from e
    return parse(obj)


def held_out_chunks(tok: Any, count: int, tokens: int, skip: int = 0) -> list[list[int]]:
    """`count` consecutive chunks of `tokens` held-out token ids (no BOS), after skipping `skip` chunks."""
    from localattn_runtime import tinymodel

    need = (skip + count) * tokens
    stream: list[int] = []
    for text in tinymodel.read_texts(held_out=True):
        stream.extend(tok(text, add_special_tokens=False)["input_ids"])
        if len(stream) >= need:
            break
    return [stream[(skip + k) * tokens : (skip + k + 1) * tokens] for k in range(count)]


def greedy_completions(model_dir: str | Path, prompts: Sequence[str], max_tokens: int) -> list[str]:
    """Greedy continuations under full attention (HF transformers, float32), decoded to text."""
    import torch
    from transformers import AutoModelForCausalLM

    from localattn_runtime import tinymodel

    tok = tinymodel.load_tokenizer(model_dir)
    model: Any = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32,
                                                      attn_implementation="sdpa")
    model.eval()
    out = []
    with torch.no_grad():
        for p in prompts:
            ids = torch.tensor([tok(p)["input_ids"]])
            gen = model.generate(ids, max_new_tokens=max_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
            out.append(tok.decode(gen[0, ids.shape[1]:], skip_special_tokens=True))
    return out


def build_golden_set(model_dir: str | Path, *, texts: int = 4, text_tokens: int = 1024, prompts: int = 8,
                     prompt_tokens: int = 96, max_tokens: int = 16) -> GoldenSet:
    """A golden set from held-out stdlib code (never trained on) and the model's own greedy completions.

    Text boundaries fall on token boundaries of the model's tokenizer so a text re-encodes to the same ids.
    """
    from localattn_runtime import tinymodel

    tok = tinymodel.load_tokenizer(model_dir)
    chunks = held_out_chunks(tok, texts + prompts, max(text_tokens, prompt_tokens))
    ppl_texts = [tok.decode(c[:text_tokens]) for c in chunks[:texts]]
    prompt_texts = [tok.decode(c[:prompt_tokens]) for c in chunks[texts:]]
    expected = greedy_completions(model_dir, prompt_texts, max_tokens)
    return GoldenSet(tuple(ppl_texts), tuple(ExactMatchItem(p, e) for p, e in zip(prompt_texts, expected, strict=True)))


def write(golden: GoldenSet, path: str | Path) -> Path:
    out = Path(path)
    out.write_text(json.dumps(golden.to_json(), indent=1) + "\n")
    return out
