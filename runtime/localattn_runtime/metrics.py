"""Our Prometheus metrics, served on vLLM's own `/metrics`, whichever vLLM process produces them.

Why files: `vllm serve` (one API server) serves `prometheus_client.REGISTRY` of the API-server process, but
KV blocks are freed in the engine-core process, a child with its own registry. So every process writes its
values into small mmap'ed files (prometheus_client's multiprocess file format), and the API server registers
one collector that merges the files of its own process tree (pids whose parent chain reaches it — so stale
files of dead or unrelated servers sharing the directory never count). With several API servers vLLM sets
`PROMETHEUS_MULTIPROC_DIR` and serves a multiprocess registry; then we write into that directory and vLLM's
collector merges our files with its own. Our files are named `KIND_localattnPID.db`, never `KIND_PID.db`:
that is prometheus_client's own name for the process's file in that directory, which we must neither share nor
delete.

`localattn_request_latency_seconds{length_bucket="lo-hi"}` is vLLM's end-to-end latency of each finished request
(`FinishedRequestStats.e2e_latency`, the figure behind `vllm:e2e_request_latency_seconds`), observed by our stat
logger (`stats.py`) in the API-server process and labelled by prompt length, lo <= prompt tokens < hi. The edges
are the configuration's `lengthBuckets`, by default [W, 4W]: `0-W` (below the window: local attention changes
nothing), `W-4W` and `4W-inf` — the labels the operator's per-bucket analysis queries (`localattn_contract`).
"""

from __future__ import annotations

import glob
import math
import os
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import localattn_contract as contract

CONFIG_INFO = "localattn_config_info"
KV_BLOCKS_FREED = "localattn_kv_blocks_freed"  # exposed as localattn_kv_blocks_freed_total
PROBE_PERPLEXITY = "localattn_probe_perplexity"
PROBE_EXACT_MATCH = "localattn_probe_exact_match"
PROBE_AGE = "localattn_probe_age_seconds"
PROBE_RUNS = "localattn_probe_runs"  # exposed as localattn_probe_runs_total{outcome=...}
REQUEST_LATENCY = contract.BUCKET_LATENCY_METRIC  # histogram, label length_bucket

#: vLLM's own `vllm:e2e_request_latency_seconds` buckets (`vllm/v1/metrics/buckets.py`), so the two agree.
LATENCY_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
                   480.0, 960.0, 1920.0, 7680.0)
FILE_TAG = "localattn"  # our files: KIND_localattnPID.db (see the module docstring)

_HELP = {
    CONFIG_INFO: "Active localattn configuration (value is always 1).",
    KV_BLOCKS_FREED: "KV cache blocks freed because they fell outside sinks and window of local layers.",
    PROBE_PERPLEXITY: "Teacher-forced perplexity of the golden set at the last probe run.",
    PROBE_EXACT_MATCH: "Fraction of golden greedy completions reproduced exactly at the last probe run.",
    PROBE_AGE: "Seconds since the last successful probe run.",
    PROBE_RUNS: "Quality probe runs, by outcome.",
    REQUEST_LATENCY: "End-to-end latency of finished requests (as vllm:e2e_request_latency_seconds), by prompt length.",
}

_lock = threading.Lock()
_files: dict[tuple[int, Path, str], Any] = {}  # (pid, dir, kind) -> MmapedDict; by pid so forks start fresh
_collector_registered = False


def metrics_dir() -> Path:
    """Where processes write their values: vLLM's multiprocess dir if set, else a per-user shared dir."""
    d = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or os.environ.get("LOCALATTN_METRICS_DIR")
    path = Path(d) if d else Path(tempfile.gettempdir()) / f"localattn-metrics-{os.getuid()}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _file(kind: str) -> Any:
    """This process's file for `kind` ('counter', 'histogram', 'gauge_max', 'gauge_mostrecent'); hold `_lock`."""
    from prometheus_client.mmap_dict import MmapedDict

    pid, directory = os.getpid(), metrics_dir()
    f = _files.get((pid, directory, kind))
    if f is None:
        path = directory / f"{kind}_{FILE_TAG}{pid}.db"
        path.unlink(missing_ok=True)  # a file left by an earlier process with this pid is not ours
        f = _files[(pid, directory, kind)] = MmapedDict(str(path))
    return f


def _key(metric: str, sample: str, labels: Mapping[str, str]) -> str:
    from prometheus_client.mmap_dict import mmap_key

    return str(mmap_key(metric, sample, list(labels), list(labels.values()), _HELP[metric]))


def _inc(metric: str, amount: float, labels: Mapping[str, str] | None = None) -> None:
    labels = labels or {}
    with _lock:
        f = _file("counter")
        key = _key(metric, metric + "_total", labels)
        value, _ = f.read_value(key)
        f.write_value(key, value + amount, 0.0)


def _observe(metric: str, value: float, labels: Mapping[str, str], buckets: Iterable[float]) -> None:
    """One histogram observation in prometheus_client's multiprocess layout: `_sum` += value, and +1 in the first
    bucket with value <= le (per-bucket counts: the collector accumulates them and derives `_count`). Every
    bucket of the label set is written, at 0 if need be, so a scrape shows the full `le` ladder."""
    from prometheus_client.utils import floatToGoString

    ladder = [*buckets, float("inf")]
    hit = next(b for b in ladder if value <= b)
    with _lock:
        f = _file("histogram")
        key = _key(metric, metric + "_sum", labels)
        f.write_value(key, f.read_value(key)[0] + value, 0.0)
        for le in ladder:
            key = _key(metric, metric + "_bucket", {**labels, "le": floatToGoString(le)})
            f.write_value(key, f.read_value(key)[0] + (1.0 if le == hit else 0.0), 0.0)


def _set(metric: str, value: float, labels: Mapping[str, str] | None = None, *, mode: str = "mostrecent") -> None:
    with _lock:
        _file(f"gauge_{mode}").write_value(_key(metric, metric, labels or {}), float(value), time.time())


# --- the API the runtime calls ------------------------------------------------------------------------------


def format_global_layers(cfg: Any) -> str:
    """`0,3` for explicit indices, `every=4,offset=0` for the rule."""
    gl = cfg.global_layers
    if gl.every is not None:
        return f"every={gl.every},offset={gl.offset}"
    return ",".join(str(i) for i in gl.indices)


def register_config_info(cfg: Any) -> None:
    """Publish the active configuration and make this process's `/metrics` serve our metrics (idempotent)."""
    labels = {
        "enabled": str(bool(cfg.enabled)).lower(),
        "window": str(cfg.window_size),
        "sinks": str(cfg.sink_tokens),
        "global_layers": format_global_layers(cfg),
        "min_context_length": str(cfg.min_context_length),
    }
    _set(CONFIG_INFO, 1.0, labels, mode="max")
    _inc(KV_BLOCKS_FREED, 0.0)  # the counter exists (at 0) from startup, not from the first freed block
    register_collector()


def kv_blocks_freed(n: int) -> None:
    """Count KV blocks freed by the local-layer KV manager (called in the engine-core process)."""
    if n:
        _inc(KV_BLOCKS_FREED, float(n))


def observe_request(prompt_tokens: int, e2e_seconds: float, boundaries: list[int]) -> None:
    """One finished request: its end-to-end latency under its prompt-length bucket."""
    labels = {contract.BUCKET_LABEL: contract.bucket_of(prompt_tokens, boundaries)}
    _observe(REQUEST_LATENCY, max(0.0, e2e_seconds), labels, LATENCY_BUCKETS)


def set_probe_result(perplexity: float, exact_match: float,
                     by_bucket: Mapping[str, tuple[float, float]] | None = None) -> None:
    """Publish one successful probe run (age restarts at 0): the aggregate without a bucket label, and each
    length bucket's (perplexity, exact match) with `length_bucket`; a bucket with nothing scored (NaN) is left
    out rather than published as NaN, so the gate sees missing data, not a number."""
    _set(PROBE_PERPLEXITY, perplexity)
    _set(PROBE_EXACT_MATCH, exact_match)
    for bucket, (ppl, em) in (by_bucket or {}).items():
        labels = {contract.BUCKET_LABEL: bucket}
        if not math.isnan(ppl):
            _set(PROBE_PERPLEXITY, ppl, labels)
        if not math.isnan(em):
            _set(PROBE_EXACT_MATCH, em, labels)
    _set(PROBE_AGE, 0.0)
    _inc(PROBE_RUNS, 1.0, {"outcome": "ok"})


def probe_failed() -> None:
    _inc(PROBE_RUNS, 1.0, {"outcome": "error"})


def set_probe_age(seconds: float) -> None:
    """Ticked by the probe thread, so the age is current on every scrape (also in multiprocess mode)."""
    _set(PROBE_AGE, seconds)


# --- serving side -------------------------------------------------------------------------------------------


def _parent(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])


def in_process_tree(pid: int, root: int) -> bool:
    """True if `pid` is alive and `root` or one of its descendants."""
    seen = 0
    cur: int | None = pid
    while cur is not None and cur > 0 and seen < 64:
        if cur == root:
            return Path(f"/proc/{pid}").exists()
        cur = _parent(cur)
        seen += 1
    return False


def _writer_pid(file: str) -> int | None:
    """The pid in one of our file names (`counter_localattn123.db` -> 123); None for any other file."""
    tail = Path(file).stem.rsplit("_", 1)[-1]
    pid = tail.removeprefix(FILE_TAG)
    return int(pid) if pid != tail and pid.isdigit() else None


def tree_files(directory: Path, root: int) -> list[str]:
    """Our metric files written by `root`'s process tree."""
    out = []
    for f in sorted(glob.glob(str(directory / "*.db"))):
        pid = _writer_pid(f)
        if pid is not None and in_process_tree(pid, root):
            out.append(f)
    return out


class TreeCollector:
    """Merges the metric files of this process's tree (prometheus_client's multiprocess format)."""

    def __init__(self, directory: Path | None = None, root: int | None = None) -> None:
        self.directory = directory
        self.root = root

    def describe(self) -> Iterable[Any]:
        return []  # no fixed names: never clashes with vLLM's collectors in the registry

    def collect(self) -> Iterable[Any]:
        from prometheus_client.multiprocess import MultiProcessCollector

        directory = self.directory or metrics_dir()
        files = tree_files(directory, self.root or os.getpid())
        ours = [f for f in files if Path(f).name.split("_")[0] in ("counter", "gauge", "histogram")]
        with _lock:
            metrics = list(MultiProcessCollector.merge(ours, accumulate=True))
        return [m for m in metrics if m.name.startswith("localattn_")]


def prune_dead(directory: Path) -> int:
    """Delete our files of processes that no longer exist (they never count); returns how many."""
    removed = 0
    for f in glob.glob(str(directory / "*.db")):
        pid = _writer_pid(f)
        if pid is not None and not Path(f"/proc/{pid}").exists():
            Path(f).unlink(missing_ok=True)
            removed += 1
    return removed


def register_collector() -> None:
    """Add the tree collector to the global registry once (vLLM's registry when it is not multiprocess)."""
    global _collector_registered
    if _collector_registered or os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return
    from prometheus_client import REGISTRY

    prune_dead(metrics_dir())  # our own directory: keeps a long-lived default dir from filling up
    REGISTRY.register(TreeCollector())  # type: ignore[arg-type]
    _collector_registered = True


def render() -> str:
    """The text exposition of the global registry (what `/metrics` serves); for tests and debugging."""
    from prometheus_client import REGISTRY, generate_latest

    return generate_latest(REGISTRY).decode()
