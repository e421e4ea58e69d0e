"""How far the choice of global layers can take SmolLM2 at W = 512, S = 4: perplexity vs full attention of layer
sets, from dense-masked forwards (`calibrate.MaskedDecoder`) of the held-out 4k texts quality.py evaluates.

The dense-masked forward is the reference the plugin is cross-checked against, and on these texts it gives the
sinks + window ratio vLLM gives (1.0882 here, 1.0881 in quality-smollm2.md), so layer sets can be compared here
without an engine per set. Rows, each on the same texts:
- sinks + window (no global layer);
- the top K of the calibrated gap table recorded by quality.py (`--plan-from`), for K = budget .. max-k;
- greedy on the calibration files (`calibrate.greedy_order`: each step the layer that closes most of the gap
  left by the ones before it), K = budget;
- with `--calibration-lengths`, the top `budget` of the gap measure rerun on the same calibration files cut to
  each of those lengths (quality.py's plan reads 1,536 tokens of each; the gap left is at 2k-4k);
- an *oracle* greedy fitted to the first evaluated text itself (text loss only), K = 1 .. max-k: not a
  calibration (it reads the test) and not exhaustive (one greedy path through a pool, not every set), but what a
  choice of that size reaches when it may look at the answer.

    .venv/bin/python benchmarks/calibration_search.py       # about 45 min on 2 vCPUs
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import quality  # the evaluated texts and calibration files, chosen the same way
from serviceproxy import commit, cpu_model

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--plan-from", default=str(RESULTS / "quality-smollm2.json"))
    ap.add_argument("--window", type=int, default=512)
    ap.add_argument("--sinks", type=int, default=4)
    ap.add_argument("--budget", type=int, default=5)
    ap.add_argument("--max-k", type=int, default=8)
    ap.add_argument("--pool", type=int, default=12, help="greedy steps after the first try this many layers")
    ap.add_argument("--context", type=int, default=4096)
    ap.add_argument("--texts", type=int, default=2)
    ap.add_argument("--no-calibration-greedy", action="store_true", help="skip greedy on the calibration files")
    ap.add_argument("--no-oracle", action="store_true", help="skip the oracle greedy fitted to text 1")
    ap.add_argument("--calibration-lengths", type=int, nargs="*", default=[],
                    help="also rerun the gap measure on the calibration files cut to these lengths")
    ap.add_argument("--out", default=str(RESULTS / "calibration-search-smollm2"))
    args = ap.parse_args()

    import torch
    from transformers import AutoTokenizer

    from localattn_runtime import calibrate

    recorded = json.loads(Path(args.plan_from).read_text())
    model = recorded["model"]
    qargs = recorded["args"]
    tok = AutoTokenizer.from_pretrained(model)
    calibration_files = frozenset(qargs["calibration_files"])
    texts = [ids[: args.context] for _, ids in quality.long_files(tok, args.context, exclude=calibration_files)]
    texts = texts[: args.texts]
    table = recorded["gap_tables"][str(args.window)]
    ranked = [r["index"] for r in sorted(table, key=lambda r: (-r["gapClosed"], r["index"]))]
    probe = calibrate.MaskedDecoder(model, args.window, args.sinks)
    t0 = time.time()
    result: dict[str, Any] = {
        "model": model, "args": vars(args), "cpu": cpu_model(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "commit": commit(),
        "rows": [],
    }
    out = Path(args.out)

    with torch.no_grad():
        embedded = [probe.embed(ids) for ids in texts]
        full = [probe.nll(range(probe.num_layers), e, p, ids, 1) for ids, (e, p) in zip(texts, embedded, strict=True)]

        def ratio(layers: list[int]) -> float:
            """exp(mean NLL with `layers` global - full's), tokens 1.. of each text (equal lengths)."""
            nll = [probe.nll(layers, e, p, ids, 1) for ids, (e, p) in zip(texts, embedded, strict=True)]
            return math.exp(sum(a - b for a, b in zip(nll, full, strict=True)) / len(texts))

        def row(name: str, layers: list[int]) -> None:
            result["rows"].append({"name": name, "k": len(layers), "layers": sorted(layers),
                                   "ratio": round(ratio(layers), 5), "elapsedSeconds": round(time.time() - t0)})
            print(result["rows"][-1], f"({time.time() - t0:.0f} s)", flush=True)
            out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")

        row("sinks + window", [])
        for k in range(args.budget, args.max_k + 1):
            row(f"gap top {k}", ranked[:k])
        if not args.no_oracle:
            _, oracle = calibrate.greedy_order(probe, [("text", texts[0], 1)], args.max_k, args.pool)
            result["oracle_order"] = [{"index": s.index, "textGain": round(s.text_gain, 6)} for s in oracle]
            for k in range(1, args.max_k + 1):
                row(f"oracle greedy (on text 1) K={k}", [s.index for s in oracle[:k]])
        calibration_texts = [ids for n, ids in quality.long_files(tok, 4096) if n in calibration_files]
        if not args.no_calibration_greedy:
            calib = [ids[: qargs["calibration_length"]] for ids in calibration_texts]
            _, steps = calibrate.greedy_order(probe, probe.samples(calib), args.budget, args.pool)
            row(f"greedy on calibration, K={args.budget}", [s.index for s in steps])
        for length in args.calibration_lengths:
            gains = calibrate.single_layer_gains(probe, probe.samples([ids[:length] for ids in calibration_texts]))
            result.setdefault("gap_tables", {})[str(length)] = [g.row() for g in gains]
            row(f"gap top {args.budget}, calibrated at {length} tokens",
                calibrate.choose_global_layers(gains, args.budget))
    lines = [f"SmolLM2, W={args.window}, S={args.sinks}, {len(texts)} held-out texts of {args.context} tokens, "
             f"dense-masked forwards; {result['date']}, {result['cpu']}, commit {result['commit']}", "",
             "| layer set | K | global layers | ppl vs full |", "|---|---|---|---|"]
    lines += [f"| {r['name']} | {r['k']} | {r['layers']} | {r['ratio']:.4f} |" for r in result["rows"]]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
