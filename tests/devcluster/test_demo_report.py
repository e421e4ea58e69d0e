"""The demo's report: a PNG timeline that matplotlib really renders, and the Markdown summary around the table."""

from __future__ import annotations

from pathlib import Path

from localattn_dev import demo_report
from localattn_dev import demo_view as view
from localattn_operator.analysis import Figures

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def samples() -> list[view.Sample]:
    out = []
    for t in range(0, 120, 6):
        groups = {"a": (2, 2, "stable")} if t < 40 else {"a": (1, 1, "stable"), "b": (1, 1, "canary")}
        if t >= 100:
            groups = {"b": (2, 2, "stable")}
        figures = {"a": Figures(p95_e2e=0.4 + t / 1000, probe_perplexity=44.6),
                   "b": Figures(p95_e2e=0.45, probe_perplexity=44.4)}  # fmt: skip
        rollout = view.RolloutView("Progressing", 0, 2, 25, 50, "a", "b") if 40 <= t < 100 else None
        out.append(view.Sample(float(t), view.arm_samples(groups, figures), rollout, "Ready 2/2"))
    return out


def test_report_writes_a_png_timeline_and_the_markdown_summary(tmp_path: Path) -> None:
    decisions = [view.Decision(40.0, "Idle -> Progressing: RolloutStarted"),
                 view.Decision(100.0, "Promoting -> Promoted: Promoted"), view.Decision(float("nan"), "untimed")]
    names = {"a": "full attention", "b": "W=64 S=4 global [0]"}
    png, md = demo_report.write_report(tmp_path / "report", samples(), decisions, names, "| table |",
                                       notes=["a note"])  # fmt: skip
    assert png == tmp_path / "report" / "timeline.png" and png.read_bytes()[:8] == PNG_MAGIC
    import matplotlib.image

    height, width, _ = matplotlib.image.imread(str(png)).shape
    assert width > 800 and height > 600  # three panels and the decision list, readable
    text = md.read_text()
    assert text.startswith("# localattn demo report\n")
    assert "![timeline](timeline.png)" in text and "| table |" in text
    assert "1. `0:40` Idle -> Progressing: RolloutStarted" in text and "2. `1:40` Promoted" not in text
    assert "2. `1:40` Promoting -> Promoted: Promoted" in text and "3. `?` untimed" in text
    assert "## Notes\n\n- a note" in text


def test_revisions_are_listed_in_the_order_they_first_served() -> None:
    assert demo_report.revisions_in_order(samples()) == ["a", "b"]
    assert demo_report.revisions_in_order([]) == []


def test_series_leave_gaps_where_a_revision_has_no_figure() -> None:
    xs, ys = demo_report._series(samples(), "b", "p95_e2e")
    assert len(xs) == len(ys) == 20
    assert ys[0] != ys[0] and ys[10] == 0.45  # NaN before b existed, its p95 after
    _, shares = demo_report._series(samples(), "b", "share")
    assert shares[0] == 0.0 and shares[10] == 50.0 and shares[-1] == 100.0
