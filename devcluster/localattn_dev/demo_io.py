"""The demo's I/O helpers: kubectl against the dev cluster, per-revision figures from Prometheus, background
load segments, and a terminal block that redraws in place.

Figures are collected with the operator's own provider and PromQL (`PrometheusProvider`,
`metrics_provider.collect_arm`), per revision label, so what the demo prints is what the analysis reads.
Load segments are `localattn load` processes started and stopped through `procs` (PID and start time
recorded in `<demo dir>/run/`), so `make demo-down` stops exactly what the demo started.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from localattn_dev import procs
from localattn_dev.testing import kubectl, kubectl_json
from localattn_operator.analysis import Figures
from localattn_operator.metrics_provider import ArmRef, collect_arm
from localattn_operator.providers.prometheus import PrometheusProvider

QUERY_TIMEOUT_SECONDS = 5.0


class DemoError(RuntimeError):
    """A step of the demo failed; the message says which and what to look at."""


@dataclass(frozen=True)
class Kube:
    kubeconfig: Path
    namespace: str = "default"

    def run(self, *args: str, input: str | None = None, timeout: float = 60.0, check: bool = True) -> str:
        proc = kubectl("-n", self.namespace, *args, kubeconfig=self.kubeconfig, input=input, timeout=timeout,
                       check=False)  # fmt: skip
        if check and proc.returncode != 0:
            raise DemoError(f"kubectl {' '.join(args)} failed: {proc.stderr.strip() or proc.stdout.strip()}")
        return proc.stdout

    def json(self, *args: str) -> Any:
        return kubectl_json("-n", self.namespace, *args, kubeconfig=self.kubeconfig)

    def apply(self, manifest: Mapping[str, Any]) -> str:
        return self.run("apply", "-f", "-", input=json.dumps(manifest)).strip()

    def lad(self, name: str) -> dict[str, Any] | None:
        out = self.run("get", "lad", name, "-o", "json", "--ignore-not-found", check=False)
        return json.loads(out) if out.strip() else None

    def pods(self, lad: str) -> list[dict[str, Any]]:
        return list(self.json("get", "pods", "-l", f"localattn.dev/deployment={lad}")["items"])

    def events(self, name: str) -> list[dict[str, Any]]:
        items = self.json("get", "events", "--field-selector", f"involvedObject.name={name}")["items"]
        return sorted(items, key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or "")


def revision_figures(prometheus: str | None, namespace: str, lad: str, revisions: Sequence[str], window: float,
                     gpu_hour_price: float | None, at: datetime | None = None) -> dict[str, Figures]:
    """Each revision's figures over the last `window` seconds (or the window ending `at`); empty without
    Prometheus. Query errors leave the figure empty (the live view must not stop for a slow query)."""
    if prometheus is None:
        return {}
    provider = PrometheusProvider(prometheus, timeout=QUERY_TIMEOUT_SECONDS, at=at)
    return {rev: collect_arm(provider, ArmRef(namespace, lad, rev), window, (), 1.0, gpu_hour_price).total
            for rev in revisions}


# --- load segments -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoadPlan:
    target: str
    model: str
    tokenizer: str
    rate: float = 3.0
    concurrency: int = 4
    window: int = 256
    output_len: int = 32


class Loads:
    """`localattn load` segments in the background, one at a time, each saving vLLM's detailed result."""

    def __init__(self, demo_dir: Path, plan: LoadPlan) -> None:
        self.demo_dir = demo_dir
        self.plan = plan

    def result_path(self, segment: str) -> Path:
        return self.demo_dir / "load" / f"{segment}.json"

    def start(self, segment: str, duration: float) -> procs.ProcRecord:
        p = self.plan
        result = self.result_path(segment)
        result.parent.mkdir(parents=True, exist_ok=True)
        result.unlink(missing_ok=True)
        argv = [
            sys.executable, "-m", "localattn_cli.main", "load", "--target", p.target, "--model", p.model,
            "--tokenizer", p.tokenizer, "--rate", str(p.rate), "--duration", str(duration),
            "--requests", str(int(p.rate * duration)), "--concurrency", str(p.concurrency),
            "--window", str(p.window), "--output-len", str(p.output_len), "--save", str(result),
        ]  # fmt: skip
        (self.demo_dir / "logs").mkdir(parents=True, exist_ok=True)
        (self.demo_dir / "logs" / f"load-{segment}.log").unlink(missing_ok=True)
        return procs.start(self.demo_dir, f"load-{segment}", argv, dict(os.environ),
                           log_path=self.demo_dir / "logs" / f"load-{segment}.log", cwd=self.demo_dir)

    def running(self, segment: str) -> bool:
        record = procs.load(self.demo_dir, f"load-{segment}")
        return record is not None and procs.alive(record)

    def stop(self, segment: str) -> None:
        procs.stop(self.demo_dir, f"load-{segment}", timeout=5.0)

    def stop_all(self) -> list[str]:
        stopped = []
        for name in procs.load_all(self.demo_dir):
            if name.startswith("load-") and procs.stop(self.demo_dir, name, timeout=5.0):
                stopped.append(name)
        return stopped

    def result(self, segment: str) -> dict[str, Any] | None:
        try:
            return dict(json.loads(self.result_path(segment).read_text()))
        except (OSError, ValueError):
            return None

    def summary_line(self, segment: str) -> str:
        log = self.demo_dir / "logs" / f"load-{segment}.log"
        try:
            lines = log.read_text(errors="replace").splitlines()
        except OSError:
            return "no log"
        lines = [part.strip() for line in lines for part in line.split("\r")]  # tqdm's progress bar
        start = max((i for i, line in enumerate(lines) if "requests: " in line and " in " in line), default=None)
        if start is None:
            return lines[-1] if lines else "no output"
        first = lines[start][lines[start].index("requests: "):]  # after whatever a library printed unterminated
        return "\n    ".join([first, *lines[start + 1:start + 7]])


# --- the terminal ------------------------------------------------------------------------------------------


class Screen:
    """A live block redrawn in place on a terminal; on a pipe, printed only when it changed (or every
    `quiet_seconds`), so a log of the demo stays readable."""

    def __init__(self, out: TextIO = sys.stdout, quiet_seconds: float = 20.0) -> None:
        self.out = out
        self.tty = out.isatty()
        self.quiet = quiet_seconds
        self._lines = 0
        self._block = ""
        self._printed_at = 0.0

    def _erase(self) -> None:
        if self.tty and self._lines:
            self.out.write(f"\x1b[{self._lines}F\x1b[J")
            self._lines = 0

    def show(self, block: str, changed: bool) -> None:
        now = time.monotonic()
        if not self.tty and not changed and now - self._printed_at < self.quiet:
            return
        self._erase()
        self.out.write(block + "\n")
        self.out.flush()
        self._block, self._printed_at = block, now
        self._lines = block.count("\n") + 1 if self.tty else 0

    def line(self, text: str) -> None:
        """A permanent line (a step, a decision) above the live block."""
        self._erase()
        self.out.write(text + "\n")
        if self.tty and self._block:
            self.out.write(self._block + "\n")
            self._lines = self._block.count("\n") + 1
        self.out.flush()

    def end_block(self) -> None:
        """Keep the current block on screen as it is (the next show starts below it)."""
        self._lines = 0
        self._block = ""
