"""A small Llama-architecture model built locally (no hub downloads), cached by content.

The tokenizer is a byte-level BPE trained on Python's standard-library sources (present on every machine);
the weights are random here (`build_random_model`, for tests that need a real vLLM model but no quality) or
trained by `localattn_runtime.train` (for calibration and quality). Every artefact lives under
`cache_root()` keyed by its build parameters and the hash of the code that builds it, so a change to the
builder rebuilds, and a warm cache is a directory lookup.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sysconfig
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

BOS, EOS, PAD = "<|bos|>", "<|eos|>", "<|pad|>"
SPECIAL_TOKENS = [BOS, EOS, PAD]

# A small chat format: vLLM's /v1/chat/completions needs a template; the model only ever saw code, so this is
# about the API working, not about chat quality.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '# ' + message['role'] + ':\\n' + message['content'] + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '# assistant:\\n' }}{% endif %}"
)

# Directories of the standard library that are left out of the corpus: tests are huge and repetitive, the rest
# are tools rather than library code. Sorted paths make the corpus (and so every artefact) deterministic.
_EXCLUDED_PARTS = {"site-packages", "dist-packages", "test", "tests", "idlelib", "lib2to3", "turtledemo"}


def cache_root() -> Path:
    """Where heavy artefacts live (`LOCALATTN_CACHE` overrides)."""
    return Path(os.environ.get("LOCALATTN_CACHE", str(Path.home() / ".cache" / "localattn")))


def source_hash(*modules: str) -> str:
    """Hash of the named modules' source files: part of every cache key, so editing a builder rebuilds."""
    import importlib.util

    h = hashlib.sha256()
    for name in modules:
        spec = importlib.util.find_spec(name)
        assert spec is not None and spec.origin is not None, name
        h.update(Path(spec.origin).read_bytes())
    return h.hexdigest()[:16]


def cache_key(params: dict[str, Any], *modules: str) -> str:
    """A content key: build parameters + builder sources + the Python version (whose stdlib is the corpus)."""
    import sys

    blob = json.dumps({"params": params, "src": source_hash(*modules), "py": sys.version_info[:2]},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def cached_dir(name: str, build: Callable[[Path], None]) -> Path:
    """Return `cache_root()/name`, building it with `build(tmp_dir)` first if absent (atomic rename)."""
    final = cache_root() / name
    if (final / ".complete").exists():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))
    try:
        build(tmp)
        (tmp / ".complete").write_text("ok\n")
        try:
            tmp.rename(final)
        except OSError:  # another process finished first (or a stale incomplete dir is in the way)
            if not (final / ".complete").exists():
                shutil.rmtree(final, ignore_errors=True)
                tmp.rename(final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


# --- corpus -------------------------------------------------------------------------------------------------


def stdlib_files() -> list[Path]:
    """The corpus files, in a fixed order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = []
    for f in sorted(root.rglob("*.py")):
        if _EXCLUDED_PARTS & set(f.relative_to(root).parts):
            continue
        files.append(f)
    return files


def is_held_out(path: Path) -> bool:
    """About 1 file in 10, chosen by a hash of its name: never trained on, used for evaluation."""
    root = Path(sysconfig.get_paths()["stdlib"])
    rel = path.relative_to(root).as_posix()
    return hashlib.sha256(rel.encode()).digest()[0] % 10 == 0


def read_texts(held_out: bool) -> Iterator[str]:
    """Corpus file texts, training or held-out split."""
    for f in stdlib_files():
        if is_held_out(f) == held_out:
            text = f.read_text(encoding="utf-8", errors="replace")
            if text.strip():
                yield text


# --- tokenizer ----------------------------------------------------------------------------------------------


def _train_tokenizer(out: Path, vocab: int) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(read_texts(held_out=False), trainer=trainer)
    bos_id = tok.token_to_id(BOS)
    # Every encoded text starts with BOS, as Llama's does: position 0 is then a natural attention sink.
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, model_max_length=1 << 20
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(str(out))


def tokenizer_dir(vocab: int = 2048) -> Path:
    """A cached trained tokenizer directory (a few seconds to build on first use)."""
    key = cache_key({"vocab": vocab}, __name__)
    return cached_dir(f"tokenizer-{key}", lambda out: _train_tokenizer(out, vocab))


def load_tokenizer(model_dir: Path | str) -> Any:
    """The tokenizer saved next to a model, loaded the way vLLM loads it."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_dir))


# --- model --------------------------------------------------------------------------------------------------


def llama_config(*, layers: int, hidden: int, heads: int, kv_heads: int, vocab: int, max_positions: int,
                 intermediate: int | None = None, rope_theta: float = 10000.0) -> dict[str, Any]:
    """config.json for a tiny `LlamaForCausalLM` (ids match the tokenizer's special tokens)."""
    if hidden % heads or heads % kv_heads:
        raise ValueError(f"hidden ({hidden}) must be a multiple of heads ({heads}), and heads of kv_heads ({kv_heads})")
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": intermediate or 4 * hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": hidden // heads,
        "vocab_size": vocab,
        "max_position_embeddings": max_positions,
        "rms_norm_eps": 1e-5,
        "rope_theta": rope_theta,
        "hidden_act": "silu",
        "tie_word_embeddings": False,
        "attention_bias": False,
        "mlp_bias": False,
        "initializer_range": 0.02,
        "bos_token_id": SPECIAL_TOKENS.index(BOS),
        "eos_token_id": SPECIAL_TOKENS.index(EOS),
        "pad_token_id": SPECIAL_TOKENS.index(PAD),
        "dtype": "bfloat16",
    }


def save_model(out: Path, config: dict[str, Any], state_dict: dict[str, Any], tok_dir: Path) -> None:
    """Write config.json, bf16 safetensors, generation config and the tokenizer files into `out`."""
    import torch
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    tensors = {k: v.detach().to(torch.bfloat16).contiguous() for k, v in state_dict.items()}
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    gen = {"bos_token_id": config["bos_token_id"], "eos_token_id": config["eos_token_id"],
           "pad_token_id": config["pad_token_id"]}
    (out / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
    for f in tok_dir.iterdir():
        if f.is_file() and not f.name.startswith("."):
            shutil.copy2(f, out / f.name)


def init_model(config: dict[str, Any], seed: int) -> Any:
    """A transformers `LlamaForCausalLM` with seeded random weights (float32, for training or saving)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(**{k: v for k, v in config.items() if k not in ("architectures", "model_type")})
    model = LlamaForCausalLM(cfg)
    return model.float()


def random_model_dir(*, layers: int = 4, hidden: int = 256, heads: int = 8, kv_heads: int = 2,
                     vocab: int = 2048, max_positions: int = 32768, seed: int = 0) -> Path:
    """The cached random-weight model directory for these parameters."""
    params = {"layers": layers, "hidden": hidden, "heads": heads, "kv_heads": kv_heads, "vocab": vocab,
              "max_positions": max_positions, "seed": seed}
    key = cache_key(params, __name__)
    config = llama_config(layers=layers, hidden=hidden, heads=heads, kv_heads=kv_heads, vocab=vocab,
                          max_positions=max_positions)  # raises on an impossible shape before anything is built

    def build(out: Path) -> None:
        tok = tokenizer_dir(vocab)
        model = init_model(config, seed)
        save_model(out, config, model.state_dict(), tok)

    return cached_dir(f"random-{key}", build)


def materialize(src: Path, out_dir: Path | str) -> Path:
    """Copy a cached model directory's files to `out_dir` (created if needed).

    Weights are hard-linked where possible (large, never edited in place); small files are copied, because
    callers do edit them (e.g. config.json rewritten as a Mistral model) and must not change the cache.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if not f.is_file() or f.name.startswith("."):
            continue
        dst = out / f.name
        if dst.exists():
            dst.unlink()
        if f.suffix == ".safetensors":
            try:
                os.link(f, dst)
                continue
            except OSError:
                pass
        shutil.copy2(f, dst)
    return out


def build_random_model(out_dir: Path | str, *, layers: int = 4, hidden: int = 256, heads: int = 8,
                       kv_heads: int = 2, vocab: int = 2048, max_positions: int = 32768,
                       seed: int = 0) -> Path:
    """Write a random-weight tiny Llama (loadable by vLLM and transformers) to `out_dir`; cached by content."""
    src = random_model_dir(layers=layers, hidden=hidden, heads=heads, kv_heads=kv_heads, vocab=vocab,
                           max_positions=max_positions, seed=seed)
    return materialize(src, out_dir)
