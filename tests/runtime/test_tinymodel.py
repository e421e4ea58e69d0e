"""The tiny models: a real tokenizer, vLLM-loadable files, content-keyed caching, and (trained) real quality."""

from __future__ import annotations

import argparse
import itertools
import json
import math
from pathlib import Path
from typing import Any

import pytest

from localattn_cli import model as model_cmd
from localattn_runtime import tinymodel


def test_tokenizer_round_trips_code_and_starts_with_bos(tiny_random_model: Path) -> None:
    tok = tinymodel.load_tokenizer(tiny_random_model)
    text = tinymodel.stdlib_files()[0].read_text()[:2000] + "\n\tünïcode → ok\n"
    ids = tok(text)["input_ids"]
    assert ids[0] == tok.bos_token_id == 0 and tok.eos_token_id == 1
    assert tok.decode(ids, skip_special_tokens=True) == text  # byte-level: lossless
    assert len(tok) == 2048
    assert len(ids) < len(text) / 2.5  # BPE learned code: several characters per token
    chat = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                   add_generation_prompt=True)
    assert chat.endswith("# assistant:\n")


def test_model_files_are_a_bf16_llama(tiny_random_model: Path) -> None:
    from safetensors import safe_open

    cfg = json.loads((tiny_random_model / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"]
    assert (cfg["num_hidden_layers"], cfg["hidden_size"], cfg["num_attention_heads"],
            cfg["num_key_value_heads"], cfg["vocab_size"]) == (4, 256, 8, 2, 2048)
    with safe_open(str(tiny_random_model / "model.safetensors"), "pt") as f:
        t = f.get_tensor("model.layers.0.self_attn.q_proj.weight")
    assert str(t.dtype) == "torch.bfloat16" and tuple(t.shape) == (256, 256)


def test_cache_is_keyed_and_copies_are_independent(tiny_random_model: Path, tmp_path: Path) -> None:
    assert tinymodel.random_model_dir() == tiny_random_model  # warm: a lookup, same key
    other = tinymodel.cache_key({"layers": 2}, tinymodel.__name__)
    assert other != tinymodel.cache_key({"layers": 4}, tinymodel.__name__)
    out = tinymodel.build_random_model(tmp_path / "m")
    (out / "config.json").write_text("{}")  # editing a copy must not touch the cache
    assert json.loads((tiny_random_model / "config.json").read_text())["model_type"] == "llama"


def test_cli_writes_the_random_model(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    model_cmd.add_parser(parser.add_subparsers())
    args = parser.parse_args(["model", "tiny", "--random", "--out", str(tmp_path / "tiny")])
    assert args.func(args) == 0
    assert {"config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja"} <= {
        p.name for p in (tmp_path / "tiny").iterdir()}


def test_cli_shapes_a_random_model_and_refuses_impossible_shapes(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    model_cmd.add_parser(parser.add_subparsers())
    args = parser.parse_args(["model", "tiny", "--random", "--layers", "2", "--hidden", "256", "--heads", "2",
                              "--kv-heads", "2", "--out", str(tmp_path / "wide")])
    assert args.func(args) == 0
    cfg = json.loads((tmp_path / "wide" / "config.json").read_text())
    assert (cfg["num_hidden_layers"], cfg["num_key_value_heads"], cfg["head_dim"]) == (2, 2, 128)
    bad = parser.parse_args(["model", "tiny", "--random", "--heads", "3", "--out", str(tmp_path / "bad")])
    with pytest.raises(SystemExit, match=r"hidden \(256\) must be a multiple of heads \(3\)"):
        bad.func(bad)
    trained = parser.parse_args(["model", "tiny", "--layers", "2", "--out", str(tmp_path / "t")])
    with pytest.raises(SystemExit, match="shape a --random model"):
        trained.func(trained)
    assert not (tmp_path / "bad").exists() and not (tmp_path / "t").exists()


@pytest.mark.slow
def test_trained_model_learned_code(tiny_trained_model: Path) -> None:
    """Held-out perplexity far below the unigram floor (its use of long context: the next test)."""
    from collections import Counter

    import torch
    from transformers import AutoModelForCausalLM

    from localattn_runtime import golden

    tok = tinymodel.load_tokenizer(tiny_trained_model)
    seqs = torch.tensor([[0, *c] for c in golden.held_out_chunks(tok, 4, 1023, skip=40)])
    model = AutoModelForCausalLM.from_pretrained(str(tiny_trained_model), dtype=torch.float32).eval()
    with torch.no_grad():
        logp = model(input_ids=seqs).logits[:, :-1].log_softmax(-1)
    nll = -logp.gather(-1, seqs[:, 1:, None])[..., 0]  # [4, 1023]
    # the floor: a unigram model of (a part of) the training split, add-one smoothed
    counts: Counter[int] = Counter()
    for text in itertools.islice(tinymodel.read_texts(held_out=False), 150):
        counts.update(tok(text, add_special_tokens=False)["input_ids"])
    total = sum(counts.values()) + len(tok)
    uni_nll = [-math.log((counts[t] + 1) / total) for t in seqs[:, 1:].flatten().tolist()]
    unigram = math.exp(sum(uni_nll) / len(uni_nll))
    ppl = math.exp(float(nll.mean()))
    assert ppl < unigram / 2, (ppl, unigram)


FAR, LATE, W_LOCAL, S_LOCAL = 256, 512, 16, 4  # perturbed: positions [S, FAR); scored: positions >= LATE


def _local_mask(n: int, window: int, sinks: int) -> Any:
    """An additive [1, 1, n, n] mask: each query sees the sinks and its last `window` keys (every layer)."""
    import torch

    i, j = torch.arange(n)[:, None], torch.arange(n)[None, :]
    seen = (j <= i) & ((j < sinks) | (j > i - window))
    return torch.zeros(n, n).masked_fill(~seen, float("-inf"))[None, None]


@pytest.mark.slow
def test_trained_model_uses_context_far_beyond_the_window(tiny_trained_model: Path) -> None:
    """Randomising tokens S..255 of each sequence (far beyond W=16 of every late position, and beyond the 4 x 16
    tokens a 4-layer all-local stack can reach) changes full attention's predictions 512+ tokens later and makes
    them worse: the model reads context far beyond the window, so window-only quality figures mean something. The
    same perturbation leaves an all-local model's late logits exactly as they were (the check is not vacuous)."""
    import torch
    from transformers import AutoModelForCausalLM

    from localattn_runtime import golden

    tok = tinymodel.load_tokenizer(tiny_trained_model)
    seqs = torch.tensor([[0, *c] for c in golden.held_out_chunks(tok, 4, 1023, skip=40)])
    gen = torch.Generator().manual_seed(0)
    perturbed = seqs.clone()
    perturbed[:, S_LOCAL:FAR] = torch.randint(3, len(tok), (seqs.shape[0], FAR - S_LOCAL), generator=gen)
    model = AutoModelForCausalLM.from_pretrained(str(tiny_trained_model), dtype=torch.float32,
                                                 attn_implementation="eager").eval()
    n = seqs.shape[1]

    def late_logp(ids: Any, mask: Any = None) -> Any:
        with torch.no_grad():
            kw = {} if mask is None else {"attention_mask": mask.expand(ids.shape[0], 1, n, n)}
            logits = model(input_ids=ids, **kw).logits[:, LATE - 1 : -1].float()
        return logits.log_softmax(-1)

    target = seqs[:, LATE:, None]
    full, full_pert = late_logp(seqs), late_logp(perturbed)
    nll, nll_pert = -full.gather(-1, target).mean(), -full_pert.gather(-1, target).mean()
    shift = (full - full_pert).abs().amax(-1)  # per position, the largest change of any token's logprob
    assert float(shift.mean()) > 0.05, float(shift.mean())  # far context moves the predictions
    assert float(nll_pert) > float(nll) + 0.01, (float(nll), float(nll_pert))  # and helps them

    mask = _local_mask(n, W_LOCAL, S_LOCAL)
    local, local_pert = late_logp(seqs, mask), late_logp(perturbed, mask)
    assert float((local - local_pert).abs().max()) < 1e-4
