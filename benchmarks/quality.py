"""Quality of local attention on the tiny trained model: perplexity by position, measured through real vLLM.

One run, side by side: stock vLLM (full attention), then vLLM with the localattn plugin configured as
window-only, window + sinks, and window + sinks + the calibrated global layers (`localattn calibrate`'s plan).
Perplexity is teacher-forced on held-out stdlib code (never trained on, and not the text calibration saw),
from vLLM's own `prompt_logprobs` — no re-implementation of attention. Each configuration runs in a fresh
process (the plugin reads its configuration once per process).

Target: window+sinks+calibrated globals within 5% of full attention's perplexity; window-only visibly worse.

    .venv/bin/python benchmarks/quality.py [--window 16 64] [--sinks 4] [--budget 1 2]
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def buckets(length: int) -> list[tuple[int, int]]:
    """Position buckets [lo, hi) of predicted tokens: doubling, from 1 to `length`."""
    edges = [1, 32, 64, 128, 256, 512, 1024, 2048, 4096]
    edges = [e for e in edges if e < length] + [length]
    return list(itertools.pairwise(edges))


def bucket_ppl(nll: list[list[float]], length: int) -> list[float]:
    """Perplexity per bucket; `nll[s][p - 1]` is the loss of predicting token p of sequence s."""
    out = []
    for lo, hi in buckets(length):
        vals = [row[p - 1] for row in nll for p in range(lo, hi)]
        out.append(math.exp(sum(vals) / len(vals)))
    return out


def overall_ppl(nll: list[list[float]]) -> float:
    vals = [v for row in nll for v in row]
    return math.exp(sum(vals) / len(vals))


def unigram_ppl(train_counts: Counter[int], seqs: list[list[int]], vocab: int) -> float:
    """Perplexity of the (add-one smoothed) unigram distribution of the training split: the floor to beat."""
    total = sum(train_counts.values()) + vocab
    nll = [-math.log((train_counts[t] + 1) / total) for s in seqs for t in s[1:]]
    return math.exp(sum(nll) / len(nll))


# --- worker: one vLLM engine, one configuration -------------------------------------------------------------


def worker(model: str, ids_file: str, out_file: str) -> None:
    """Score every sequence with prompt_logprobs under whatever LOCALATTN_CONFIG_JSON this process has."""
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    seqs: list[list[int]] = json.loads(Path(ids_file).read_text())
    length = max(len(s) for s in seqs)
    llm = LLM(model=model, dtype="bfloat16", max_model_len=length + 8, enable_prefix_caching=False,
              max_num_seqs=4, seed=0, enforce_eager=True, distributed_executor_backend="uni")
    t0 = time.time()
    outs = llm.generate([TokensPrompt(prompt_token_ids=s) for s in seqs],
                        SamplingParams(max_tokens=1, temperature=0, prompt_logprobs=0), use_tqdm=False)
    nll = []
    for seq, out in zip(seqs, outs, strict=True):
        lps = out.prompt_logprobs or []
        nll.append([-lps[p][seq[p]].logprob for p in range(1, len(seq))])  # type: ignore[index]
    Path(out_file).write_text(json.dumps({"nll": nll, "seconds": time.time() - t0}))


def run_config(name: str, model: str, ids_file: str, cfg: dict | None, workdir: Path) -> list[list[float]]:
    out = workdir / f"{name}.json"
    env = dict(os.environ)
    env.pop("LOCALATTN_CONFIG", None)
    env.pop("LOCALATTN_CONFIG_JSON", None)
    if cfg is not None:
        env["LOCALATTN_CONFIG_JSON"] = json.dumps(cfg)
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # engine in this process: one start per config, not three
    t0 = time.time()
    proc = subprocess.run([sys.executable, __file__, "--worker", model, ids_file, str(out)], env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-8000:])
        raise SystemExit(f"{name}: vLLM worker failed ({proc.returncode})")
    print(f"  {name:<28} scored in {time.time() - t0:5.1f} s (engine start included)", flush=True)
    return list(json.loads(out.read_text())["nll"])


# --- the benchmark ------------------------------------------------------------------------------------------


def plot(panels: dict[int, dict[str, list[float]]], length: int, path: Path, sinks: int) -> None:
    """One panel per window size: perplexity by position bucket, one line per configuration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mids = [math.sqrt(lo * hi) for lo, hi in buckets(length)]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.2), squeeze=False, sharey=True)
    for ax, (window, rows) in zip(axes[0], panels.items(), strict=True):
        for name, ppl in rows.items():
            ax.plot(mids, ppl, marker="o", label=name)
        ax.axvline(window, color="grey", linestyle=":", linewidth=1)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("token position (bucket)")
        ax.set_title(f"W={window}, S={sinks}", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("perplexity, held-out stdlib code")
    fig.suptitle("tiny trained model through vLLM: full vs local attention", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def configs_for(window: int, sinks: int, plans: dict[int, tuple[Path, dict]]) -> dict[str, dict]:
    """The local configurations for one window (full attention is shared across windows)."""
    base = {"windowSize": window, "globalLayers": {"indices": []}}
    out: dict[str, dict] = {
        "window-only": {**base, "sinkTokens": 0},
        "window+sinks": {**base, "sinkTokens": sinks},
    }
    for plan_file, plan in plans.values():
        label = ",".join(map(str, plan["globalLayers"])) or "none"
        out[f"window+sinks+global[{label}]"] = {**base, "sinkTokens": sinks, "planFile": str(plan_file)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="model dir (default: the cached tiny trained model)")
    ap.add_argument("--window", type=int, nargs="+", default=[16, 64])
    ap.add_argument("--sinks", type=int, default=4)
    ap.add_argument("--budget", type=int, nargs="+", default=[1, 2], help="global layers chosen by calibration")
    ap.add_argument("--sequences", type=int, default=12)
    ap.add_argument("--length", type=int, default=1024)
    ap.add_argument("--png", default=str(RESULTS / "quality.png"))
    args = ap.parse_args()

    from localattn_runtime import calibrate, golden, tinymodel, train

    model = args.model or str(train.trained_model_dir())
    tok = tinymodel.load_tokenizer(model)
    bos = tok.convert_tokens_to_ids(tinymodel.BOS)
    # Evaluation text: held-out chunks after the ones calibration samples (calibration uses the first few).
    seqs = [[bos, *c] for c in golden.held_out_chunks(tok, args.sequences, args.length - 1, skip=8)]
    print(f"model {model}\n{len(seqs)} held-out sequences x {args.length} tokens; windows {args.window}, "
          f"sinks {args.sinks}, calibrated global layers: {args.budget}", flush=True)
    plans: dict[int, dict[int, tuple[Path, dict]]] = {}
    nll: dict[int, dict[str, list[list[float]]]] = {}
    with tempfile.TemporaryDirectory(prefix="localattn-quality-") as tmp:
        work = Path(tmp)
        ids_file = work / "ids.json"
        ids_file.write_text(json.dumps(seqs))
        full = run_config("full", model, str(ids_file), None, work)
        for w in args.window:
            plans[w] = {}
            for k in args.budget:
                plan = calibrate.calibrate(model, w, args.sinks, k, samples=4, length=args.length)
                print(calibrate.format_table(plan), flush=True)
                plans[w][k] = (calibrate.write_plan(plan, work / f"plan-{w}-{k}.json"), plan)
            nll[w] = {"full (stock vLLM)": full}
            for i, (name, cfg) in enumerate(configs_for(w, args.sinks, plans[w]).items()):
                nll[w][name] = run_config(f"w{w}-c{i}", model, str(ids_file), cfg, work)

    stream = train.token_stream(tok, held_out=False)
    uni = unigram_ppl(Counter(stream), seqs, len(tok))
    head = " ".join(f"{f'{lo}-{hi - 1}':>9}" for lo, hi in buckets(args.length))
    panels: dict[int, dict[str, list[float]]] = {}
    totals: dict[int, dict[str, float]] = {}
    print(f"\nperplexity by token position, held-out code; unigram baseline {uni:.1f}")
    for w in args.window:
        panels[w] = {name: bucket_ppl(v, args.length) for name, v in nll[w].items()}
        totals[w] = {name: overall_ppl(v) for name, v in nll[w].items()}
        ref = totals[w]["full (stock vLLM)"]
        print(f"\nW={w} S={args.sinks}")
        print(f"{'configuration':<34} {head} {'all':>9} {'vs full':>8}")
        for name, ppl in panels[w].items():
            print(f"{name:<34} " + " ".join(f"{p:9.2f}" for p in ppl) + f" {totals[w][name]:9.2f} "
                  f"{totals[w][name] / ref:8.3f}x")
    png = Path(args.png)
    plot(panels, args.length, png, args.sinks)
    png.with_suffix(".json").write_text(json.dumps({
        "model": model, "sinks": args.sinks, "budget": args.budget, "sequences": len(seqs),
        "length": args.length, "buckets": buckets(args.length),
        "plans": {w: {k: plan for k, (_, plan) in by_k.items()} for w, by_k in plans.items()}, "perplexity": panels,
        "overall": totals, "unigram": uni}, indent=1) + "\n")
    print(f"\nplot: {png}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(*sys.argv[2:5])
    else:
        main()
