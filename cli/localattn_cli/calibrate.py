"""`localattn calibrate`: measure what each layer loses under sinks + window and propose the global layers."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("calibrate", help="choose which layers stay global (writes a plan file)")
    p.add_argument("--model", required=True, help="model directory (HF format)")
    p.add_argument("--window", type=int, required=True, help="window size W (tokens)")
    p.add_argument("--sinks", type=int, required=True, help="sink tokens S")
    p.add_argument("--budget", type=int, required=True, help="number K of layers that stay global")
    p.add_argument("--method", choices=("gap", "mass"), default="gap",
                   help="gap (default): share of the local-vs-full loss gap each layer closes when global, on the "
                        "samples and on long-range copies of them (about L/2 + 2 forwards per sample); mass: "
                        "attention mass outside sinks + window (one forward per sample, a weaker proxy)")
    p.add_argument("--samples", type=int, default=4, help="held-out sample sequences (default 4)")
    p.add_argument("--length", type=int, default=1024, help="tokens per sample (default 1024)")
    p.add_argument("--text", action="append", metavar="FILE",
                   help="sample text file(s) instead of held-out stdlib sources (repeatable)")
    p.add_argument("--out", help="write the plan JSON (or, with --to-configmap, the manifest) here "
                                 "(default: print it)")
    p.add_argument("--to-configmap", metavar="NAME",
                   help="emit a ConfigMap manifest NAME holding the plan (YAML; the table goes to stderr), for "
                        "spec.localAttention.calibrationPlan: {configMapName: NAME, key: ...}; no cluster access")
    p.add_argument("--key", default=PLAN_KEY, help=f"the plan's key in the ConfigMap (default {PLAN_KEY})")
    p.add_argument("--namespace", help="metadata.namespace of the ConfigMap (default: none, kubectl's -n decides)")
    p.set_defaults(func=_calibrate)


#: The ConfigMap key the LAD's calibrationPlan reads by default (operator models.CalibrationPlanRef.key).
PLAN_KEY = "plan.json"


def plan_config_map(plan: dict[str, Any], name: str, *, key: str = PLAN_KEY,
                    namespace: str | None = None) -> dict[str, Any]:
    """A ConfigMap manifest holding `plan` under `key`: what spec.localAttention.calibrationPlan names."""
    metadata: dict[str, Any] = {"name": name, "labels": {"app.kubernetes.io/managed-by": "localattn-calibrate"}}
    if namespace:
        metadata["namespace"] = namespace
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata,
            "data": {key: json.dumps(plan, indent=2) + "\n"}}


def emit(plan: dict[str, Any], args: argparse.Namespace) -> None:
    """Print the table and write the plan (or its ConfigMap), each checked by the plugin's parser first."""
    import tempfile

    from localattn_runtime import calibrate

    if not args.to_configmap:
        print(calibrate.format_table(plan))
        if args.out:
            calibrate.write_plan(plan, args.out)
            print(f"plan written to {args.out}")
        else:
            print(json.dumps(plan, indent=2))
        return
    import yaml

    print(calibrate.format_table(plan), file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:  # the plugin must accept the plan before it goes anywhere
        calibrate.write_plan(plan, Path(tmp) / args.key)
    manifest = yaml.safe_dump(plan_config_map(plan, args.to_configmap, key=args.key, namespace=args.namespace),
                              sort_keys=False)
    if args.out:
        Path(args.out).write_text(manifest)
        print(f"ConfigMap {args.to_configmap} written to {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(manifest)


def _calibrate(args: argparse.Namespace) -> int:
    from localattn_runtime import calibrate

    texts = [Path(f).read_text() for f in args.text] if args.text else None
    try:
        plan = calibrate.calibrate(args.model, args.window, args.sinks, args.budget, samples=args.samples,
                                   length=args.length, texts=texts, method=args.method)
    except ValueError as e:
        print(f"localattn calibrate: {e}", file=sys.stderr)
        return 2
    emit(plan, args)
    return 0
