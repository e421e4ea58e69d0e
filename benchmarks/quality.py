"""Quality of local attention on a real pretrained model (SmolLM2-135M), measured through vLLM with the plugin.

For each window W (default 256, 512, 1024) and S sinks, against full attention (stock vLLM):
  window-only (S = 0, no global layer), sinks + window, sinks + window + K global layers chosen by
  `localattn calibrate`'s default measure (the share of the local-vs-full loss gap each layer closes), the K
  its cheap `--method mass` proxy (outside-window attention mass) chooses, and the same K evenly spaced.
- Perplexity by token position, teacher-forced from **vLLM's own `prompt_logprobs`** (the path that serves),
  on held-out Python stdlib files (each sequence is the start of one file of >= ctx tokens; calibration reads
  other files). Every ratio to full attention carries a paired block-bootstrap 95% CI: blocks of 64
  consecutive tokens, resampled with replacement, the same blocks for both configurations.
- Retrieval at controlled distances d (below, at and beyond each W): a prompt of held-out code holds
  `SECRET_<name> = "<5 digits>"` and a comment of 10 random words; d tokens later it asks
  `assert SECRET_<name> == "` and repeats the comment. Needle: all 5 digits are the model's top-1 (teacher
  forced) and their summed logprob; copy: share of the repeated words' tokens (after the first) at top-1.

All configurations run in one worker process (vLLM in-process, one engine per configuration, the plugin's
configuration swapped between engines), results written after each engine so a cut run keeps what it did.

    .venv/bin/python benchmarks/quality.py --quick          # 4k context, few texts and trials
    .venv/bin/python benchmarks/quality.py                  # 4k and 8k, the full set (hours on 2 vCPUs)
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
POSITION_EDGES = [0, 128, 256, 512, 1024, 2048, 4096, 8192]
BLOCK = 64  # bootstrap block (tokens)
WORDS = ["apple", "river", "stone", "cloud", "maple", "orbit", "velvet", "candle", "harbor", "quartz", "falcon",
         "meadow", "lantern", "copper", "tundra", "violet", "ember", "saddle", "glacier", "pepper"]


# --- inputs (tokens) ----------------------------------------------------------------------------------------


def long_files(tok: Any, min_tokens: int, exclude: frozenset[int] = frozenset()) -> list[tuple[int, list[int]]]:
    """Held-out stdlib files of at least `min_tokens` tokens, tokenized, in a fixed order: (file number, ids)."""
    from localattn_runtime import tinymodel

    out = []
    for n, text in enumerate(tinymodel.read_texts(held_out=True)):
        ids = tok(text, add_special_tokens=False)["input_ids"]
        if len(ids) >= min_tokens and n not in exclude:
            out.append((n, ids))
    return out


def retrieval_prompt(tok: Any, filler: list[int], distance: int, rng: random.Random) -> dict[str, Any]:
    """One needle + copy prompt: the answer digits start `distance` tokens after the needle's digits."""
    name = "".join(rng.choice("ABCDEFGHJKLMNPQRSTUVWXYZ") for _ in range(4))
    digits = "".join(rng.choice("0123456789") for _ in range(5))
    words = " ".join(rng.choice(WORDS) for _ in range(10))
    enc = lambda s: tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    head = filler[:64] + enc(f'\nSECRET_{name} = "')
    value = enc(digits)
    mid_tail = enc(f'"\n# {words}\n')
    query = enc(f'\nassert SECRET_{name} == "')
    gap = distance - len(value) - len(mid_tail) - len(query)  # needle digit -> answer digit: `distance`
    if gap < 0:
        raise ValueError(f"distance {distance} is too short for the prompt's own lines")
    body = filler[64:64 + gap]
    if len(body) < gap:
        raise ValueError("not enough filler text")
    close = enc('"\n# ')
    copy = enc(words)
    ids = head + value + mid_tail + body + query
    answer_at = len(ids)
    ids += value + close
    copy_at = len(ids)
    ids += copy + enc("\n")
    return {"ids": ids, "distance": distance, "answer": [answer_at, len(value)], "copy": [copy_at, len(copy)]}


# --- worker: every configuration, one vLLM engine each, in this process -------------------------------------


def worker(job_file: str, out_file: str) -> None:
    from vllm import LLM, SamplingParams
    from vllm.v1.attention.backends.registry import AttentionBackendEnum, register_backend
    from vllm.v1.attention.selector import _cached_get_attn_backend

    from localattn_runtime import plugin

    job = json.loads(Path(job_file).read_text())
    os.environ["LOCALATTN_CONFIG_JSON"] = json.dumps({"windowSize": 64})  # any enabled config registers
    plugin.register()
    results: dict[str, Any] = {}
    for name, cfg in job["configs"].items():
        if cfg is None:  # really stock vLLM's backend
            os.environ.pop("LOCALATTN_CONFIG_JSON", None)
            register_backend(AttentionBackendEnum.CPU_ATTN,
                             "vllm.v1.attention.backends.cpu_attn.CPUAttentionBackend")
        else:
            os.environ["LOCALATTN_CONFIG_JSON"] = json.dumps(cfg)
            register_backend(AttentionBackendEnum.CPU_ATTN, plugin.BACKEND_CPU)
        plugin.reset_for_tests()
        _cached_get_attn_backend.cache_clear()
        t0 = time.time()
        llm = LLM(job["model"], dtype="bfloat16", max_model_len=job["max_len"], enable_prefix_caching=False,
                  enforce_eager=True, seed=0, distributed_executor_backend="uni", max_num_seqs=4)
        seqs = job["texts"] + [p["ids"] for p in job["prompts"]]
        outs = llm.generate([{"prompt_token_ids": s} for s in seqs],
                            SamplingParams(max_tokens=1, temperature=0, prompt_logprobs=0), use_tqdm=False)
        rows = []
        for s, o in zip(seqs, outs, strict=True):
            lps = o.prompt_logprobs or []
            rows.append([[lps[p][s[p]].logprob, lps[p][s[p]].rank] for p in range(1, len(s))])  # type: ignore
        results[name] = {"texts": rows[:len(job["texts"])], "prompts": rows[len(job["texts"]):],
                         "seconds": time.time() - t0}
        llm.llm_engine.engine_core.shutdown()
        del llm
        Path(out_file).write_text(json.dumps(results))
        print(f"  {name:<34} {time.time() - t0:6.1f} s", flush=True)


# --- analysis (pure) ----------------------------------------------------------------------------------------


def position_buckets(ctx: int) -> list[tuple[int, int]]:
    edges = [e for e in POSITION_EDGES if e < ctx] + [ctx]
    return list(itertools.pairwise(edges))


def paired_ratio(local: list[list[float]], full: list[list[float]], lo: int, hi: int, rng: random.Random,
                 reps: int = 1000) -> tuple[float, float, float]:
    """exp(mean NLL local - mean NLL full) over predicted positions [lo, hi), with a paired block bootstrap CI."""
    blocks = []  # (sum local, sum full, n) per block of BLOCK positions
    for a, b in zip(local, full, strict=True):
        for start in range(max(lo, 1), min(hi, len(a) + 1), BLOCK):
            end = min(start + BLOCK, hi, len(a) + 1)
            blocks.append((sum(a[start - 1:end - 1]), sum(b[start - 1:end - 1]), end - start))

    def ratio(sample: list[tuple[float, float, int]]) -> float:
        n = sum(x[2] for x in sample)
        return math.exp((sum(x[0] for x in sample) - sum(x[1] for x in sample)) / n)

    boots = sorted(ratio([rng.choice(blocks) for _ in blocks]) for _ in range(reps))
    return ratio(blocks), boots[int(0.025 * reps)], boots[int(0.975 * reps) - 1]


def retrieval_scores(rows: list[list[list[float]]], prompts: list[dict[str, Any]]) -> dict[int, dict[str, float]]:
    """Per distance: needle accuracy (all digits top-1), mean needle logprob, copy top-1 share."""
    by: dict[int, dict[str, list[float]]] = {}
    for row, p in zip(rows, prompts, strict=True):
        a0, an = p["answer"]
        c0, cn = p["copy"]
        digits = [row[i - 1] for i in range(a0, a0 + an)]
        copied = [row[i - 1] for i in range(c0 + 1, c0 + cn)]
        d = by.setdefault(p["distance"], {"needle": [], "logprob": [], "copy": []})
        d["needle"].append(float(all(r == 1 for _, r in digits)))
        d["logprob"].append(sum(lp for lp, _ in digits))
        d["copy"].append(sum(r == 1 for _, r in copied) / len(copied))
    return {k: {m: sum(v) / len(v) for m, v in d.items()} | {"n": len(d["needle"])} for k, d in sorted(by.items())}


def outside_mass(model_dir: str, seqs: list[list[int]], windows: list[int], sinks: int) -> dict[int, list[Any]]:
    """`localattn calibrate`'s measure (`calibrate.outside_fraction`, averaged over heads and samples) for every
    window from one full-attention forward per sample (the attention maps do not depend on W)."""
    import torch
    from transformers import AutoModelForCausalLM

    from localattn_runtime import calibrate

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="eager")
    totals = {w: [0.0] * model.config.num_hidden_layers for w in windows}
    with torch.no_grad():
        for seq in seqs:
            attentions = model.eval()(input_ids=torch.tensor([seq]), output_attentions=True).attentions
            for w in windows:
                for i, a in enumerate(attentions):
                    totals[w][i] += float(calibrate.outside_fraction(a, w, sinks).mean()) / len(seqs)
    return {w: [calibrate.LayerMass(i, m) for i, m in enumerate(t)] for w, t in totals.items()}


def evenly_spaced(num_layers: int, k: int) -> list[int]:
    """k layers spread over the depth, centred in equal slices (30 layers, k=5: 3, 9, 15, 21, 27)."""
    return [int((i + 0.5) * num_layers / k) for i in range(k)]


# --- the benchmark ------------------------------------------------------------------------------------------


def configs_for(window: int, sinks: int, calibrated: list[int], mass: list[int],
                even: list[int]) -> dict[str, dict[str, Any]]:
    base = {"windowSize": window}
    return {
        f"W{window} window-only": {**base, "sinkTokens": 0, "globalLayers": {"indices": []}},
        f"W{window} sinks+window": {**base, "sinkTokens": sinks, "globalLayers": {"indices": []}},
        f"W{window} +calibrated{calibrated}": {**base, "sinkTokens": sinks, "globalLayers": {"indices": calibrated}},
        f"W{window} +mass{mass}": {**base, "sinkTokens": sinks, "globalLayers": {"indices": mass}},
        f"W{window} +even{even}": {**base, "sinkTokens": sinks, "globalLayers": {"indices": even}},
    }


def run_context(args: argparse.Namespace, model: str, tok: Any, ctx: int, plans: dict[int, list[int]],
                mass_plans: dict[int, list[int]], num_layers: int, work: Path) -> dict[str, Any]:
    files = [ids for _, ids in long_files(tok, ctx, exclude=args.calibration_files)]
    texts = [f[:ctx] for f in files[:args.texts]]
    rng = random.Random(ctx)
    fillers = files[args.texts:] or files
    far = set() if args.quick else {ctx - 256}  # quick: the farthest distance is 2 * max(W)
    distances = sorted({d for w in args.window for d in (w // 2, w, 2 * w)} | far)
    prompts = [retrieval_prompt(tok, fillers[t % len(fillers)][t * 97 % 500:], d, rng)
               for d in distances for t in range(args.trials)]
    configs: dict[str, dict[str, Any] | None] = {"full": None}
    for w in args.window:
        configs.update(configs_for(w, args.sinks, plans[w], mass_plans[w], evenly_spaced(num_layers, args.budget)))
    job = {"model": model, "max_len": ctx + 64, "texts": texts, "prompts": prompts, "configs": configs}
    job_file, out_file = work / f"job-{ctx}.json", work / f"out-{ctx}.json"
    job_file.write_text(json.dumps(job))
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "2", "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
           "TOKENIZERS_PARALLELISM": "false"}
    env.pop("LOCALATTN_CONFIG", None)
    print(f"context {ctx}: {len(texts)} texts, {len(prompts)} retrieval prompts (distances {distances}), "
          f"{len(configs)} configurations", flush=True)
    proc = subprocess.run([sys.executable, __file__, "--worker", str(job_file), str(out_file)], env=env,
                          stdout=sys.stdout, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-6000:])
    raw = json.loads(out_file.read_text()) if out_file.exists() else {}
    return summarize(raw, configs, prompts, ctx, args)


def summarize(raw: dict[str, Any], configs: dict[str, Any], prompts: list[dict[str, Any]], ctx: int,
              args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(0)
    out: dict[str, Any] = {"ctx": ctx, "configs": {}, "buckets": position_buckets(ctx)}
    if "full" not in raw:
        return out
    full = [[-lp for lp, _ in row] for row in raw["full"]["texts"]]
    for name in configs:
        if name not in raw:
            continue
        nll = [[-lp for lp, _ in row] for row in raw[name]["texts"]]
        out["configs"][name] = {
            "ppl": math.exp(sum(map(sum, nll)) / sum(map(len, nll))),
            "ratio": paired_ratio(nll, full, 1, ctx, rng),
            "bucket_ratio": [paired_ratio(nll, full, lo, hi, rng) for lo, hi in position_buckets(ctx)],
            "retrieval": retrieval_scores(raw[name]["prompts"], prompts),
            "seconds": raw[name]["seconds"],
        }
    return out


def report(result: dict[str, Any], windows: list[int], budget: int) -> str:
    """A markdown table per context, and the targets' verdicts."""
    ctx, rows = result["ctx"], result["configs"]
    if not rows:
        return f"context {ctx}: no results"
    heads = [f"{lo}-{hi}" for lo, hi in result["buckets"]]
    lines = [f"### context {ctx}", "", "| configuration | ppl | vs full [95% CI] | " + " | ".join(heads) + " |",
             "|---|---|---|" + "---|" * len(heads)]
    for name, r in rows.items():
        ratio, lo, hi = r["ratio"]
        cells = " | ".join(f"{b[0]:.3f}" for b in r["bucket_ratio"])
        lines.append(f"| {name} | {r['ppl']:.3f} | {ratio:.4f} [{lo:.4f}, {hi:.4f}] | {cells} |")
    distances = sorted({d for r in rows.values() for d in r["retrieval"]}, key=int)
    lines += ["", "needle accuracy / copy top-1 by distance (tokens):", "",
              "| configuration | " + " | ".join(str(d) for d in distances) + " |",
              "|---|" + "---|" * len(distances)]
    for name, r in rows.items():
        cells = " | ".join(f"{r['retrieval'][d]['needle']:.2f} / {r['retrieval'][d]['copy']:.2f}"
                           for d in distances)
        lines.append(f"| {name} | {cells} |")
    lines += ["", "targets:"]
    full = rows.get("full")
    for w in windows:
        cal = next((n for n in rows if n.startswith(f"W{w} +calibrated")), None)
        even = next((n for n in rows if n.startswith(f"W{w} +even")), None)
        mass = next((n for n in rows if n.startswith(f"W{w} +mass")), None)
        wo = rows.get(f"W{w} window-only")
        if cal is None or full is None:
            continue
        c = rows[cal]
        beyond = [d for d in distances if int(d) > w]

        def acc(r: dict[str, Any], beyond: list[Any] = beyond) -> float:
            return sum(r["retrieval"][d]["needle"] for d in beyond) / max(1, len(beyond))

        lines.append(f"- W={w}, K={budget}: ppl ratio {c['ratio'][0]:.4f} (CI {c['ratio'][1]:.4f}-"
                     f"{c['ratio'][2]:.4f}) {'<=' if c['ratio'][2] <= 1.02 else '>'} 1.02 (upper CI); "
                     f"needle beyond W {acc(c):.2f} vs full {acc(full):.2f} "
                     f"({'>=' if acc(c) >= 0.9 * acc(full) else '<'} 90% of full)"
                     + (f"; window-only {wo['ratio'][0]:.4f}" if wo else "")
                     + (f"; evenly spaced {rows[even]['ratio'][0]:.4f} "
                        f"({'calibrated better' if c['ratio'][0] < rows[even]['ratio'][0] else 'calibrated NOT better'})"
                        if even else "")
                     + (f"; mass proxy {rows[mass]['ratio'][0]:.4f}" if mass else ""))
    return "\n".join(lines)


def plot(results: list[dict[str, Any]], windows: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2 * len(results), len(windows), figsize=(5 * len(windows), 7.5 * len(results)),
                             squeeze=False)
    for k, res in enumerate(results):
        mids = [math.sqrt(max(lo, 1) * hi) for lo, hi in res["buckets"]]
        for j, w in enumerate(windows):
            ax, bx = axes[2 * k][j], axes[2 * k + 1][j]
            for name, r in res["configs"].items():
                if name != "full" and not name.startswith(f"W{w} "):
                    continue
                label = name.removeprefix(f"W{w} ")
                ys = [b[0] for b in r["bucket_ratio"]]
                err = [[b[0] - b[1] for b in r["bucket_ratio"]], [b[2] - b[0] for b in r["bucket_ratio"]]]
                ax.errorbar(mids, ys, yerr=err, marker="o", capsize=2, label=label)
                ds = sorted(r["retrieval"], key=int)
                bx.plot([int(d) for d in ds], [r["retrieval"][d]["needle"] for d in ds], marker="o", label=label)
            for a in (ax, bx):
                a.axvline(w, color="grey", linestyle=":")
                a.set_xscale("log", base=2)
                a.grid(True, alpha=0.3)
                a.legend(fontsize=7)
            ax.set_yscale("log")  # window-only is several times worse; the others differ by percents
            ax.set_title(f"ctx {res['ctx']}, W={w}: perplexity / full, by position", fontsize=9)
            bx.set_title(f"ctx {res['ctx']}, W={w}: needle accuracy by distance", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="HF model dir (default: the cached SmolLM2-135M, `localattn model smollm2`)")
    ap.add_argument("--window", type=int, nargs="+", default=[512, 256, 1024],
                    help="run in this order (the target W=512 first, so a cut run still has it)")
    ap.add_argument("--sinks", type=int, default=4)
    ap.add_argument("--budget", type=int, default=5, help="global layers (SmolLM2: 5 of 30 = 1/6)")
    ap.add_argument("--context", type=int, nargs="+", default=[4096, 8192])
    ap.add_argument("--texts", type=int, default=8)
    ap.add_argument("--trials", type=int, default=8, help="retrieval prompts per distance")
    ap.add_argument("--calibration-samples", type=int, default=4)
    ap.add_argument("--calibration-length", type=int, default=1536)
    ap.add_argument("--quick", action="store_true", help="4k only, 2 texts, 2 trials, 2 calibration samples")
    ap.add_argument("--out", default=str(RESULTS / "quality-smollm2"))
    ap.add_argument("--work", help="keep the worker's job and output files here (default: a temporary dir)")
    args = ap.parse_args()
    if args.quick:
        args.context, args.texts, args.trials, args.calibration_samples = [4096], 2, 2, 2

    import tempfile

    from transformers import AutoConfig, AutoTokenizer

    from localattn_runtime import calibrate

    model = args.model or str(__import__("localattn_runtime.smollm2", fromlist=["x"]).smollm2_dir())
    tok = AutoTokenizer.from_pretrained(model)
    num_layers = AutoConfig.from_pretrained(model).num_hidden_layers
    # Calibration: `localattn calibrate`'s measures on files the evaluation never reads (the first long ones).
    picked = long_files(tok, 4096)[:args.calibration_samples]
    args.calibration_files = frozenset(n for n, _ in picked)
    calib = [ids[:args.calibration_length] for _, ids in picked]
    t0 = time.time()
    mass_plans = {w: calibrate.make_plan(model, w, args.sinks, args.budget, m)["globalLayers"]
                  for w, m in outside_mass(model, calib, args.window, args.sinks).items()}
    print(f"calibration (mass) {time.time() - t0:.0f} s", flush=True)
    plans, gap_tables = {}, {}
    for w in args.window:
        t1 = time.time()
        plan = calibrate.make_plan(model, w, args.sinks, args.budget,
                                   calibrate.measure_gap_closed(model, calib, w, args.sinks))
        plans[w], gap_tables[w] = plan["globalLayers"], plan["layers"]
        print(calibrate.format_table(plan), flush=True)
        print(f"calibrated W={w} S={args.sinks} K={args.budget}: global layers {plans[w]} (gap, "
              f"{time.time() - t1:.0f} s); mass proxy {mass_plans[w]}", flush=True)
    results = []
    with tempfile.TemporaryDirectory(prefix="localattn-quality-") as tmp:
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        for ctx in args.context:
            res = run_context(args, model, tok, ctx, plans, mass_plans, num_layers, work)
            results.append(res)
            print("\n" + report(res, args.window, args.budget) + "\n", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    args.calibration_files = sorted(args.calibration_files)
    out.with_suffix(".json").write_text(json.dumps({"model": model, "args": vars(args), "plans": plans,
                                                    "mass_plans": mass_plans, "gap_tables": gap_tables,
                                                    "results": results}, indent=1) + "\n")
    out.with_suffix(".md").write_text("\n\n".join(report(r, args.window, args.budget) for r in results) + "\n")
    plot(results, args.window, out.with_suffix(".png"))
    print(f"wrote {out.with_suffix('.json')}, .md, .png")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(sys.argv[2], sys.argv[3])
    else:
        main()
