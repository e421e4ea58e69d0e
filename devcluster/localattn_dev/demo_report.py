"""The report `make demo` ends with: a PNG timeline and the summary as Markdown (`<demo dir>/demo-report/`).

The timeline has one panel per question a reviewer asks of a rollout: where did traffic go (each revision's
share of the ready serving pods, and the rollout's desired weight when the operator reports one), was it
fast (p95 end-to-end latency per revision, from Prometheus), was it good (the quality probe's perplexity on
the golden set per revision), and what was decided when (vertical lines, numbered, listed under the plot).
matplotlib with the Agg backend: no display needed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from localattn_dev.demo_view import Decision, Sample

TIMELINE = "timeline.png"
SUMMARY = "summary.md"


def _series(samples: Sequence[Sample], revision: str, value: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for s in samples:
        arm = next((a for a in s.arms if a.revision == revision), None)
        if value == "share":
            y: float | None = arm.share if arm is not None else 0.0
        else:
            y = getattr(arm.figures, value) if arm is not None else None
        xs.append(s.t)
        ys.append(math.nan if y is None else float(y))
    return xs, ys


def revisions_in_order(samples: Sequence[Sample]) -> list[str]:
    seen: dict[str, None] = {}
    for s in samples:
        for arm in s.arms:
            seen.setdefault(arm.revision, None)
    return list(seen)


def write_timeline(path: Path, samples: Sequence[Sample], decisions: Sequence[Decision],
                   names: Mapping[str, str], title: str = "localattn demo") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 1, figsize=(11, 8.5), sharex=True, constrained_layout=True)
    share_ax, p95_ax, ppl_ax = axes
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, rev in enumerate(revisions_in_order(samples)):
        label = f"{names.get(rev, '?')} ({rev[:10]})"
        colour = colours[i % len(colours)]
        share_ax.step(*_series(samples, rev, "share"), where="post", color=colour, label=label)
        p95_ax.plot(*_series(samples, rev, "p95_e2e"), marker=".", color=colour, label=label)
        ppl_ax.plot(*_series(samples, rev, "probe_perplexity"), marker=".", color=colour, label=label)
    desired = [(s.t, s.rollout.desired_weight) for s in samples if s.rollout is not None and s.rollout.canary_revision]
    if desired:
        share_ax.plot([t for t, _ in desired], [w for _, w in desired], "k:", label="canary weight (desired)")
    share_ax.set_ylabel("traffic share\n(% of ready pods)")
    share_ax.set_ylim(-5, 105)
    p95_ax.set_ylabel("p95 end-to-end\nlatency (s, log)")
    if any(not math.isnan(y) and y > 0 for rev in revisions_in_order(samples)
           for y in _series(samples, rev, "p95_e2e")[1]):
        p95_ax.set_yscale("log")  # a stalled canary (tens of seconds) next to a healthy arm (under one)
    ppl_ax.set_ylabel("probe perplexity\n(golden set)")
    ppl_ax.set_xlabel("seconds since the demo started")
    for ax in axes:
        ax.grid(True, alpha=0.3)
        for n, d in enumerate(decisions, 1):
            if d.t == d.t:
                ax.axvline(d.t, color="grey", linestyle="--", linewidth=0.8)
                if ax is share_ax:
                    ax.annotate(str(n), (d.t, 102), fontsize=8, ha="center", va="bottom", annotation_clip=False)
    share_ax.legend(loc="center left", fontsize=8, framealpha=0.8)
    share_ax.set_title(title)
    legend = "\n".join(f"{n}. {_short(d.text)}" for n, d in enumerate(decisions, 1))
    if legend:
        fig.text(0.01, -0.01, legend, fontsize=7.5, va="top", family="monospace")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def _short(text: str, limit: int = 150) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _clock(t: float) -> str:
    return f"{int(t) // 60}:{int(t) % 60:02d}" if t == t else "?"


def summary_document(summary_table: str, decisions: Sequence[Decision], notes: Sequence[str],
                     title: str = "localattn demo report") -> str:
    lines = [f"# {title}", "", f"![timeline]({TIMELINE})", "", "## The revisions side by side", "", summary_table, ""]
    if decisions:
        lines += ["## Decisions", ""] + [f"{n}. `{_clock(d.t)}` {d.text}" for n, d in enumerate(decisions, 1)] + [""]
    if notes:
        lines += ["## Notes", ""] + [f"- {note}" for note in notes] + [""]
    return "\n".join(lines)


def write_report(directory: Path, samples: Sequence[Sample], decisions: Sequence[Decision],
                 names: Mapping[str, str], summary_table: str, notes: Sequence[str] = ()) -> list[Path]:
    """Write timeline.png and summary.md into `directory`; returns both paths."""
    directory.mkdir(parents=True, exist_ok=True)
    png = write_timeline(directory / TIMELINE, samples, decisions, names)
    md = directory / SUMMARY
    md.write_text(summary_document(summary_table, decisions, notes))
    return [png, md]
