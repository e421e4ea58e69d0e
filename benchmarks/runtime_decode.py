"""Decode and prefill speed of the runtime on real vLLM (CPU), side by side in one run.

Same weights, same process, one engine per variant (all alive at once and stepped round-robin, so that other
load on the machine affects them alike), prefix caching off, batch 1:
  full       stock vLLM, full attention on every layer
  local+G    our plugin: W=512, S=4, layer 0 global (the "some global layers" case)
  all-local  our plugin: W=512, S=4, no global layer
  vllm-swa   vLLM's own sliding window: the same weights loaded as MistralForCausalLM, sliding_window=512
For each context (1k / 4k / 16k) it prints prefill seconds, decode ms/token and tokens/s, and the KV blocks the
sequence holds per layer. vLLM runs as `vllm serve` does by default: the model compiled by torch.compile/Inductor
(on CPU the whole model is one graph and attention an opaque custom op, so our backend runs inside it);
`--eager` gives the enforce_eager figures of earlier runs.
Blocks come from vLLM's scheduler (its block tables, freed blocks excluded) in an in-process run of all four
engines, stepped round-robin; the timings by default from a second run with each engine core in its own process,
as `vllm serve` runs it, the four variants' requests interleaved (`--in-process-timing`: the round-robin step
times instead).

    .venv/bin/python benchmarks/runtime_decode.py            # 1k, 4k, 16k (several minutes on 2 cores)
    .venv/bin/python benchmarks/runtime_decode.py --quick    # 1k, 4k
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

WINDOW, SINKS = 512, 4
VARIANTS: dict[str, dict[str, Any] | None] = {
    "full": None,
    "local+G": {"windowSize": WINDOW, "sinkTokens": SINKS, "globalLayers": {"indices": [0]}},
    "all-local": {"windowSize": WINDOW, "sinkTokens": SINKS, "globalLayers": {"indices": []}},
    "vllm-swa": None,
}


def mistral_copy(model: Path, out: Path) -> Path:
    """The same weights as a Mistral model with vLLM's native sliding window."""
    from localattn_runtime.tinymodel import materialize

    materialize(model, out)
    cfg = json.loads((out / "config.json").read_text())
    cfg.update({"architectures": ["MistralForCausalLM"], "model_type": "mistral", "sliding_window": WINDOW})
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    return out


def _select(config: dict[str, Any] | None) -> None:
    """Point vLLM's CPU_ATTN at our backend (with `config`) or at its own, in this process."""
    from vllm.v1.attention.backends.registry import AttentionBackendEnum, register_backend
    from vllm.v1.attention.selector import _cached_get_attn_backend

    from localattn_runtime import plugin

    if config is None:
        os.environ.pop("LOCALATTN_CONFIG_JSON", None)
        register_backend(AttentionBackendEnum.CPU_ATTN, "vllm.v1.attention.backends.cpu_attn.CPUAttentionBackend")
    else:
        os.environ["LOCALATTN_CONFIG_JSON"] = json.dumps(config)
        register_backend(AttentionBackendEnum.CPU_ATTN, plugin.BACKEND_CPU)
    plugin.reset_for_tests()
    _cached_get_attn_backend.cache_clear()


class Engine:
    """One in-process vLLM engine for a variant, with access to its scheduler's block tables."""

    def __init__(self, model: Path, config: dict[str, Any] | None, max_len: int, eager: bool) -> None:
        from vllm import LLM, SamplingParams

        _select(config)
        self.llm = LLM(str(model), dtype="bfloat16", enforce_eager=eager, enable_prefix_caching=False,
                       max_model_len=max_len, distributed_executor_backend="uni", seed=0)
        self.engine = self.llm.llm_engine
        core = self.engine.engine_core.engine_core  # type: ignore[attr-defined]  # the in-process client
        self.sched = core.scheduler
        self.managers = self.sched.kv_cache_manager.coordinator.single_type_managers
        self.groups = self.sched.kv_cache_manager.kv_cache_config.kv_cache_groups
        # Warm-up past the window, so that every path (and its one-time setup) has run before timing.
        self.engine.add_request("warm", {"prompt_token_ids": [0] + [5] * 700}, SamplingParams(max_tokens=4))
        while self.engine.has_unfinished_requests():
            self.engine.step()

    def blocks_per_layer(self) -> list[int]:
        """Blocks the running request holds, per layer (a group's block holds one page per layer of it)."""
        if not self.sched.running:
            return []
        rid = self.sched.running[0].request_id
        held = [sum(not b.is_null for b in m.req_to_blocks.get(rid, [])) for m in self.managers]
        return [h for h, g in zip(held, self.groups, strict=True) for _ in g.layer_names]

    def close(self) -> None:
        self.engine.engine_core.shutdown()


def _produced(out: Any) -> bool:
    return bool(out.outputs and out.outputs[0].token_ids)


def measure(engines: dict[str, Engine], contexts: list[int], gen: int) -> dict[str, dict[int, dict[str, Any]]]:
    """All variants step round-robin on the same prompt, so that load on the machine hits them alike.

    Prefill = the sum of a variant's own step times until its first token; decode = the median of its own
    step times after that (one token per step, batch 1).
    """
    from vllm import SamplingParams

    rng = random.Random(0)
    res: dict[str, dict[int, dict[str, Any]]] = {name: {} for name in engines}
    for n in contexts:
        prompt = [0] + [rng.randrange(3, 2048) for _ in range(n - 1)]
        sp = SamplingParams(temperature=0, max_tokens=gen + 1, ignore_eos=True)
        prefill = dict.fromkeys(engines, 0.0)
        first = dict.fromkeys(engines, False)
        steps: dict[str, list[float]] = {name: [] for name in engines}
        held: dict[str, list[int]] = {name: [] for name in engines}
        for e in engines.values():
            e.engine.add_request(f"ctx{n}", {"prompt_token_ids": prompt}, sp)
        while any(e.engine.has_unfinished_requests() for e in engines.values()):
            for name, e in engines.items():
                if not e.engine.has_unfinished_requests():
                    continue
                t = time.perf_counter()
                outs = e.engine.step()
                dt = time.perf_counter() - t
                if first[name]:
                    steps[name].append(dt)
                else:
                    prefill[name] += dt
                    first[name] = any(_produced(o) for o in outs)
                held[name] = e.blocks_per_layer() or held[name]
        for name in engines:
            decode = sorted(steps[name])[len(steps[name]) // 2]
            res[name][n] = {"prefill_s": prefill[name], "decode_ms": decode * 1e3, "tok_s": 1.0 / decode,
                            "blocks_per_layer": held[name], "blocks_total": sum(held[name])}
    return res


_TIMING_SCRIPT = r"""
import json, os, random, sys
from vllm import LLM, SamplingParams
if __name__ == "__main__":
    variants, contexts, gen, reps, mode = json.loads(sys.argv[1]), json.loads(sys.argv[2]), int(sys.argv[3]), \
        int(sys.argv[4]), sys.argv[5]
    llms = {}
    for name, (model, config) in variants.items():
        # The engine core process is spawned now and reads the plugin's configuration from this environment.
        if config is None:
            os.environ.pop("LOCALATTN_CONFIG_JSON", None)
        else:
            os.environ["LOCALATTN_CONFIG_JSON"] = json.dumps(config)
        llms[name] = LLM(model, dtype="bfloat16", enforce_eager=mode == "eager", enable_prefix_caching=False,
                         disable_log_stats=False, max_model_len=max(contexts) + gen + 8, seed=0)
        llms[name].generate([{"prompt_token_ids": [0] + [5] * 700}], SamplingParams(max_tokens=4), use_tqdm=False)
    rng = random.Random(0)
    out = {name: {} for name in llms}
    for n in contexts:
        prompt = [{"prompt_token_ids": [0] + [rng.randrange(3, 2048) for _ in range(n - 1)]}]
        pre, dec = {name: [] for name in llms}, {name: [] for name in llms}
        for _ in range(reps):
            for name, llm in llms.items():  # interleaved: load on the machine hits every variant alike
                (o,) = llm.generate(prompt, SamplingParams(temperature=0, max_tokens=gen + 1, ignore_eos=True),
                                    use_tqdm=False)
                m = o.metrics  # vLLM's own engine-core timestamps
                pre[name].append(m.first_token_ts - m.scheduled_ts)
                dec[name].append((m.last_token_ts - m.first_token_ts) / (m.num_generation_tokens - 1))
        for name in llms:
            out[name][n] = {"prefill_s": min(pre[name]), "decode_ms": min(dec[name]) * 1e3}
    print("RESULT " + json.dumps(out), flush=True)
    for llm in llms.values():  # engine cores left behind would keep this run's output pipes open
        llm.llm_engine.engine_core.shutdown()
"""


def time_in_server_mode(variants: dict[str, tuple[Path, dict[str, Any] | None]], contexts: list[int], gen: int,
                        reps: int, eager: bool) -> dict[str, dict[int, dict[str, float]]]:
    """Prefill and decode as `vllm serve` runs them: each variant's engine core in its own process (all four
    alive at once, runs interleaved), the driver in another.

    From vLLM's own per-request timestamps (engine core): prefill = scheduled -> first token, decode = mean
    inter-token time after it; the minimum over `reps` runs of each.
    """
    import subprocess

    env = {k: v for k, v in os.environ.items() if k not in ("LOCALATTN_CONFIG_JSON", "VLLM_ENABLE_V1_MULTIPROCESSING")}
    spec = {name: (str(model), config) for name, (model, config) in variants.items()}
    proc = subprocess.run([sys.executable, "-c", _TIMING_SCRIPT, json.dumps(spec), json.dumps(contexts), str(gen),
                           str(reps), "eager" if eager else "compiled"], env=env, capture_output=True, text=True,
                          timeout=3600)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"timing run failed:\n{proc.stderr[-3000:]}")
    raw = json.loads(lines[-1][len("RESULT "):])
    return {name: {int(k): v for k, v in per.items()} for name, per in raw.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="contexts 1k and 4k only")
    ap.add_argument("--gen", type=int, default=32, help="decode steps measured per context (median reported)")
    ap.add_argument("--model", type=Path, help="a Llama model dir (default: the cached random tiny model)")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1, like vllm serve on 2 cores)")
    ap.add_argument("--reps", type=int, default=3, help="server-mode timing: runs per figure (min reported)")
    ap.add_argument("--in-process-timing", action="store_true",
                    help="report the in-process round-robin timings instead of server-mode ones")
    ap.add_argument("--eager", action="store_true", help="enforce_eager (no torch.compile), as in earlier runs")
    ap.add_argument("--heads", type=int, default=8, help="query heads of the random tiny model (hidden 256)")
    ap.add_argument("--kv-heads", type=int, default=2, help="KV heads of the random tiny model")
    args = ap.parse_args(argv)
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # per engine; four engines live side by side
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # in-process: read vLLM's block tables directly
    # One thread, as `vllm serve` uses on this 2-core machine ("Reducing Torch threads from 2 to 1 for
    # serving"); in-process vLLM would keep 2, and OpenMP's barriers then suffer badly from other load.
    import torch

    torch.set_num_threads(args.threads)

    from localattn_runtime import plugin
    from localattn_runtime.tinymodel import random_model_dir

    model = args.model or random_model_dir(heads=args.heads, kv_heads=args.kv_heads)
    contexts = [1024, 4096] if args.quick else [1024, 4096, 16384]
    os.environ["LOCALATTN_CONFIG_JSON"] = json.dumps({"windowSize": WINDOW})
    plugin.register()
    max_len = max(contexts) + args.gen + 8
    with tempfile.TemporaryDirectory() as tmp:
        swa = mistral_copy(model, Path(tmp) / "mistral")
        engines = {name: Engine(swa if name == "vllm-swa" else model, cfg, max_len, args.eager)
                   for name, cfg in VARIANTS.items()}
        try:
            res = measure(engines, contexts, args.gen)
        finally:
            for e in engines.values():
                e.close()
        if not args.in_process_timing:
            # Timings as `vllm serve` runs (engine core in its own process); blocks from the run above.
            variants = {name: (swa if name == "vllm-swa" else model, cfg) for name, cfg in VARIANTS.items()}
            timing = time_in_server_mode(variants, contexts, args.gen, args.reps, args.eager)
            for name, per in timing.items():
                for n, t in per.items():
                    res[name][n].update(t, tok_s=1e3 / t["decode_ms"])
    report(res, contexts, model, "eager" if args.eager else "compiled",
           "in-process" if args.in_process_timing else "server mode")
    if args.json:
        args.json.write_text(json.dumps({v: {str(n): r for n, r in d.items()} for v, d in res.items()}, indent=2))
    return 0


def report(res: dict[str, dict[int, dict[str, Any]]], contexts: list[int], model: Path, mode: str,
           timing: str) -> None:
    names = list(res)
    cfg = json.loads((model / "config.json").read_text())
    print(f"\nRuntime decode (CPU): tiny Llama {cfg['num_hidden_layers']} layers, hidden {cfg['hidden_size']}, "
          f"{cfg['num_attention_heads']} heads / {cfg['num_key_value_heads']} KV heads, bf16, batch 1, "
          f"W={WINDOW} S={SINKS}; vLLM {mode}, timings {timing}")
    print(f"{'context':>8} {'metric':<18}" + "".join(f"{n:>12}" for n in names))
    for n in contexts:
        rows = [("prefill s", "prefill_s", "{:.3f}"), ("decode ms/tok", "decode_ms", "{:.2f}"),
                ("decode tok/s", "tok_s", "{:.0f}"), ("KV blocks/seq", "blocks_total", "{}")]
        for label, key, fmt in rows:
            print(f"{n:>8} {label:<18}" + "".join(f"{fmt.format(res[v][n][key]):>12}" for v in names))
        print(f"{n:>8} {'blocks per layer':<18}" + "".join(
            f"{'/'.join(map(str, res[v][n]['blocks_per_layer'])):>12}" for v in names))
    n = max(contexts)
    full, loc, allo, swa = (res[v][n] for v in ("full", "local+G", "all-local", "vllm-swa"))
    g, layers = 1, len(full["blocks_per_layer"])
    pred = (g * full["decode_ms"] + (layers - g) * allo["decode_ms"]) / layers
    print(f"\nAt {n} tokens:")
    print(f"  all-local vs vLLM SWA   decode {allo['decode_ms'] / swa['decode_ms']:.2f}x the time (target <= 1.25x), "
          f"prefill {allo['prefill_s'] / swa['prefill_s']:.2f}x")
    print(f"  all-local vs full       decode {full['decode_ms'] / allo['decode_ms']:.2f}x faster, "
          f"prefill {full['prefill_s'] / allo['prefill_s']:.2f}x faster (target >= 4x)")
    print(f"  vLLM SWA vs full        decode {full['decode_ms'] / swa['decode_ms']:.2f}x faster, "
          f"prefill {full['prefill_s'] / swa['prefill_s']:.2f}x faster (vLLM's own kernel: the reachable bound)")
    print(f"  local+G vs full         decode {full['decode_ms'] / loc['decode_ms']:.2f}x faster; the 1-of-{layers} "
          f"layer split predicts {full['decode_ms'] / pred:.2f}x")
    lb = max(allo["blocks_per_layer"])
    fb = max(full["blocks_per_layer"])
    print(f"  KV blocks per local layer: {lb} vs {fb} full ({lb / fb:.3f}; target <= 1/8)")


if __name__ == "__main__":
    sys.exit(main())
