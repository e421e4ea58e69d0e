"""`kubectl localattn`: manual rollout control and the per-arm status table, as `kubectl argo rollouts` offers.

    kubectl localattn pause NAME [-n NS]      # hold at the current step (the gates keep running)
    kubectl localattn resume NAME             # leave a pause (or retry after a rollback/abort)
    kubectl localattn promote NAME            # promote now, skipping the remaining steps
    kubectl localattn abort NAME              # all traffic to stable, the canary removed
    kubectl localattn status NAME [--history N]

The verbs only write the control annotations `rollout_control` reads (`localattn.dev/<verb>`), with the
current UTC time as the value: each value is a new request, handled once by the operator and acknowledged by
an event, so a repeated command is a repeated request and nothing has to remove the annotation. Everything
goes through `kubectl` (found as `$KUBECTL`, else on PATH) with `--request-timeout`, so kubeconfig, context
and namespace behave as in any kubectl command (`--kubeconfig`, `--context`, `-n` are passed through).
`format_status` is pure (a LAD as JSON in, text out) and tested on a recorded status.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from localattn_operator.duration import format_time
from localattn_operator.models import ArmFiguresStatus, LocalAttnDeploymentSpec, RolloutStatus
from localattn_operator.rollout_control import VERBS, annotation

RESOURCE = "localattndeployments.localattn.dev"
REQUEST_TIMEOUT_SECONDS = 30
_FIGURES: tuple[tuple[str, str, str], ...] = (  # attribute, row label, number format
    ("requests", "requests", "{:.0f}"),
    ("p95_latency_seconds", "p95 e2e latency (s)", "{:.4g}"),
    ("p95_ttft_seconds", "p95 TTFT (s)", "{:.4g}"),
    ("p95_itl_seconds", "p95 ITL (s)", "{:.4g}"),
    ("error_rate", "error rate", "{:.2%}"),
    ("tokens_per_gpu_second", "tokens / GPU-s", "{:.4g}"),
    ("cost_per_million_tokens", "cost / 1M tokens", "{:.4g}"),
    ("probe_perplexity", "probe perplexity", "{:.4g}"),
    ("probe_exact_match", "probe exact match", "{:.3f}"),
)


def _num(value: float | None, fmt: str = "{:.4g}") -> str:
    return "-" if value is None else fmt.format(value)


def table(rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns, two spaces apart (kubectl's look); the last column is not padded."""
    if not rows:
        return ""
    widths = [max(len(r[i]) for r in rows if i < len(r)) for i in range(max(len(r) for r in rows))]
    return "\n".join("  ".join(c.ljust(widths[i]) if i < len(r) - 1 else c for i, c in enumerate(r)).rstrip()
                     for r in rows)


def _figure_rows(stable: ArmFiguresStatus | None, canary: ArmFiguresStatus | None, prefix: str = "",
                 currency: str = "") -> list[list[str]]:
    rows = []
    for attr, label, fmt in _FIGURES:
        a = getattr(stable, attr) if stable is not None else None
        b = getattr(canary, attr) if canary is not None else None
        if prefix and a is None and b is None:
            continue  # per bucket, only what the bucket measures
        name = f"{label} ({currency})" if attr == "cost_per_million_tokens" and currency else label
        rows.append([prefix + name, _num(a, fmt), _num(b, fmt)])
    return rows


def _steps(spec: LocalAttnDeploymentSpec | None, index: int) -> str:
    if spec is None:
        return f"step {index + 1}"
    steps = (spec.rollout.effective_steps() if spec.rollout is not None else [])
    if not steps:
        return "no steps (promote at once)"
    step = steps[min(index, len(steps) - 1)]
    what = f"setWeight {step.set_weight}" if step.set_weight is not None else (
        f"pause {step.pause.duration}" if step.pause is not None and step.pause.duration else "pause (until resumed)")
    return f"step {index + 1}/{len(steps)} ({what})"


def format_status(lad: dict[str, Any], history: int = 5) -> str:
    """The `status` verb's text for one LAD as the API returns it."""
    meta = lad.get("metadata") or {}
    raw = ((lad.get("status") or {}).get("rollout"))
    header = f"Name:       {meta.get('name', '?')} (namespace {meta.get('namespace', '?')})"
    if raw is None:
        return header + "\nRollout:    no rollout status yet (the operator has not reconciled this LAD)\n"
    status = RolloutStatus.model_validate(raw)
    try:
        spec: LocalAttnDeploymentSpec | None = LocalAttnDeploymentSpec.model_validate(lad.get("spec") or {})
    except ValueError:
        spec = None  # an invalid spec (InvalidSpec): the status still reads
    currency = spec.cost.currency if spec is not None and spec.cost is not None else ""
    lines = [header]
    phase = status.phase + (f" ({status.stage})" if status.stage else "")
    if status.paused_manually:
        phase += ", paused manually"
    lines.append(f"Phase:      {phase}" + (f": {status.message}" if status.message else ""))
    if status.canary_revision is not None:
        lines.append(f"Step:       {_steps(spec, status.step_index)}; weight desired {status.desired_weight}%, "
                     f"achieved {status.achieved_weight}%")
    arms = f"stable {status.stable_revision or '-'} ({status.stable_replicas} planned)"
    if status.canary_revision:
        arms += f", canary {status.canary_revision} ({status.canary_replicas} planned)"
    for label, value in (("previous", status.previous_revision), ("rejected", status.rejected_revision),
                         ("draining", status.draining_revision)):
        if value:
            arms += f", {label} {value}"
    lines.append(f"Revisions:  {arms}")
    c = status.counters
    lines.append(f"Counters:   successful {c.successful}, failed {c.failed}, inconclusive {c.inconclusive}, "
                 f"errors {c.errors} ({c.consecutive_errors} in a row)")
    last = status.last_analysis
    if last is None:
        lines.append("Analysis:   none yet")
    else:
        errored = [g for g in last.gates if g.phase == "Error"]
        why = f" ({errored[0].message})" if last.phase == "Inconclusive" and errored else ""  # which query, why
        lines.append(f"Analysis:   {last.phase} at {last.finished_at}{why}")
        rows = [["FIGURE", f"STABLE {last.stable.revision or '-'}", f"CANARY {last.canary.revision or '-'}"]]
        rows += _figure_rows(last.stable, last.canary, currency=currency)
        buckets = sorted({b.bucket for b in last.stable.buckets} | {b.bucket for b in last.canary.buckets},
                         key=lambda b: (int(b.split("-")[0]) if b.split("-")[0].isdigit() else 0, b))
        for bucket in buckets:
            s = next((b for b in last.stable.buckets if b.bucket == bucket), None)
            k = next((b for b in last.canary.buckets if b.bucket == bucket), None)
            rows += _figure_rows(s, k, prefix=f"[{bucket}] ", currency=currency)
        lines += ["", table(rows)]
        if last.paired:
            rows = [["PAIRED BUCKET", "PROMPTS", "AGREEMENT", "FIRST DIVERGENCE", "LOGPROB DIVERGENCE"]]
            rows += [[p.bucket, str(p.prompts), _num(p.agreement, "{:.3f}"), _num(p.first_divergence),
                      _num(p.logprob_divergence)] for p in last.paired]
            lines += ["", table(rows)]
        if last.gates:
            rows = [["GATE", "BUCKET", "PHASE", "CANARY", "STABLE", "THRESHOLD"]]
            rows += [[g.gate, g.bucket, g.phase, _num(g.canary), _num(g.stable), _num(g.threshold)]
                     for g in last.gates]
            lines += ["", table(rows)]
    if status.history and history > 0:
        rows = [["TIME", "FROM", "TO", "REASON", "MESSAGE"]]
        rows += [[h.time, h.from_phase, h.to_phase, h.reason, h.message] for h in status.history[-history:]]
        lines += ["", f"Decisions (last {min(history, len(status.history))} of {len(status.history)}):", table(rows)]
    return "\n".join(lines) + "\n"


# --- I/O ----------------------------------------------------------------------------------------------------


def _kubectl(args: argparse.Namespace, *argv: str) -> subprocess.CompletedProcess[str]:
    cmd = [os.environ.get("KUBECTL", "kubectl")]
    for flag in ("--kubeconfig", "--context", "--namespace"):
        value = getattr(args, flag[2:], None)  # absent when not given (SUPPRESS: see build_parser)
        if value:
            cmd += [flag, value]
    cmd += [*argv, f"--request-timeout={REQUEST_TIMEOUT_SECONDS}s"]
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=REQUEST_TIMEOUT_SECONDS + 10, check=False)
    except FileNotFoundError:
        return subprocess.CompletedProcess(cmd, 127, "", f"{cmd[0]}: not found (set $KUBECTL or put kubectl on PATH)\n")
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(cmd, 124, "", f"kubectl did not finish within {REQUEST_TIMEOUT_SECONDS + 10}s\n")


def request_value(now: datetime | None = None) -> str:
    """The annotation value: the current UTC time (RFC 3339, microseconds: two requests never collide)."""
    return format_time(now or datetime.now(UTC))


def run_verb(args: argparse.Namespace) -> int:
    value = request_value()
    result = _kubectl(args, "annotate", RESOURCE, args.name, "--overwrite", f"{annotation(args.verb)}={value}")
    if result.returncode != 0:
        sys.stderr.write(result.stderr)
        return result.returncode
    print(f"localattndeployment/{args.name}: {args.verb} requested ({annotation(args.verb)}={value}); "
          "the operator acknowledges it with an event")
    return 0


def run_status(args: argparse.Namespace) -> int:
    result = _kubectl(args, "get", RESOURCE, args.name, "-o", "json")
    if result.returncode != 0:
        sys.stderr.write(result.stderr)
        return result.returncode
    lad = json.loads(result.stdout)
    if args.output == "json":
        print(json.dumps((lad.get("status") or {}).get("rollout"), indent=2))
    else:
        sys.stdout.write(format_status(lad, history=args.history))
    return 0


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    # Accepted before and after the verb (kubectl passes everything after `localattn` to the plugin);
    # SUPPRESS keeps a sub-command from resetting what was given before it.
    common.add_argument("--kubeconfig", default=argparse.SUPPRESS, help="Path to the kubeconfig file.")
    common.add_argument("--context", default=argparse.SUPPRESS, help="The kubeconfig context to use.")
    common.add_argument("-n", "--namespace", default=argparse.SUPPRESS, help="The LAD's namespace.")
    root = argparse.ArgumentParser(prog="kubectl localattn", parents=[common],
                                   description="Control and inspect LocalAttnDeployment rollouts.")
    verbs = root.add_subparsers(dest="verb", metavar="VERB", required=True)
    helps = {"pause": "hold the rollout at its current step", "resume": "leave a pause, or retry after a rollback",
             "promote": "promote the canary now", "abort": "send all traffic to stable and remove the canary"}
    for verb in VERBS:
        sub = verbs.add_parser(verb, parents=[common], help=helps[verb])
        sub.add_argument("name", help="LocalAttnDeployment name")
        sub.set_defaults(func=run_verb)
    status = verbs.add_parser("status", parents=[common], help="the rollout's per-arm analysis table")
    status.add_argument("name", help="LocalAttnDeployment name")
    status.add_argument("--history", type=int, default=5, help="decisions to show (default 5)")
    status.add_argument("-o", "--output", choices=("table", "json"), default="table")
    status.set_defaults(func=run_status)
    return root


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    sys.exit(args.func(args))


if __name__ == "__main__":
    main()
