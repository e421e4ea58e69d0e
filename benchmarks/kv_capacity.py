"""Concurrent long sequences at a fixed KV budget: stock vLLM vs the plugin, counted on vLLM's own scheduler.

The random tiny Llama (4 layers, 2 KV heads x 32, fp32: 2 KiB of KV per token), block size 32, a KV budget of
exactly four full-attention sequences of PROMPT + GEN tokens, 14 such requests queued at once. Stock vLLM and
the plugin (W=64, S=4, layer 0 global, 3 local layers) each run them in-process (the engine runner of
tests/runtime, `_engines.py`), recording vLLM's scheduler state every step; the figure is the peak number of
requests decoding at once, against the factor the block arithmetic predicts. tests/runtime/test_kv.py asserts
the same bound on the same setting (`--prompt 700 --gen 96`, the defaults).

    .venv/bin/python benchmarks/kv_capacity.py [--prompt 700] [--gen 96] [--requests 14]   (~1-2 min)
"""

from __future__ import annotations

import argparse
import random
import runpy
import tempfile
from pathlib import Path
from typing import Any

from localattn_runtime import layers, tinymodel

ROOT = Path(__file__).resolve().parents[1]
BS, W, S, LAYERS = 32, 64, 4, 4
BYTES_PER_TOKEN = LAYERS * 2 * 32 * 2 * 4  # layers x KV heads x head size x (K, V) x fp32


def _prompt(n: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [0] + [rng.randrange(3, 2048) for _ in range(n - 1)]


def _max_decoding(run: dict[str, Any]) -> int:
    return max(sum(1 for r in s["reqs"].values() if r["computed"] >= r["prompt"]) for s in run["trace"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompt", type=int, default=700)
    parser.add_argument("--gen", type=int, default=96)
    parser.add_argument("--requests", type=int, default=14)
    args = parser.parse_args()
    seq = args.prompt + args.gen
    budget = 4 * (-(-seq // BS) * BS) * BYTES_PER_TOKEN
    engine = {"block_size": BS, "max_num_batched_tokens": 256, "max_model_len": 2048, "kv_cache_memory_bytes": budget}
    prompts = [_prompt(args.prompt, seed) for seed in range(args.requests)]
    local = {"windowSize": W, "sinkTokens": S, "globalLayers": {"indices": [0]}}
    engines = [{"name": name, "config": cfg, "engine_args": engine, "prompts": prompts, "max_tokens": args.gen,
                "trace": True} for name, cfg in (("stock", None), ("local", local))]
    run_engines = runpy.run_path(str(ROOT / "tests" / "runtime" / "_engines.py"))["run_engines"]
    with tempfile.TemporaryDirectory() as tmp:
        runs = run_engines({"model": str(tinymodel.random_model_dir()), "engines": engines},
                           Path(tmp) / "results.json", timeout=1800)
    full_blocks = LAYERS * -(-seq // BS)
    local_blocks = -(-seq // BS) + (LAYERS - 1) * layers.blocks_in_use(
        seq, window=W, sinks=S, min_context_length=0, block_size=BS)
    expected = full_blocks / local_blocks
    stock, plugin = _max_decoding(runs["stock"]), _max_decoding(runs["local"])
    print(f"KV budget {budget / 2**20:.2f} MiB (4 full-attention sequences of {seq} tokens), {args.requests} "
          f"requests, block {BS}, W={W}, S={S}, 1 global + {LAYERS - 1} local layers")
    print(f"peak concurrent decoding sequences: stock {stock}, local {plugin} ({plugin / max(stock, 1):.2f}x; "
          f"block arithmetic predicts {expected:.2f}x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
