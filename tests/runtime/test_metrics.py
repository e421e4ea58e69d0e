"""Our metrics reach the serving process's registry from any process of its tree (as from vLLM's engine core)."""

from __future__ import annotations

import multiprocessing as mp
import os
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.mmap_dict import MmapedDict, mmap_key

from localattn_runtime import config, metrics


@pytest.fixture()
def registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CollectorRegistry:
    monkeypatch.setenv("LOCALATTN_METRICS_DIR", str(tmp_path))
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    reg = CollectorRegistry()
    reg.register(metrics.TreeCollector())  # type: ignore[arg-type]
    return reg


def _scrape(reg: CollectorRegistry) -> dict[str, float]:
    out = {}
    for line in generate_latest(reg).decode().splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def _engine_core(n: int, ready: mp.synchronize.Event, done: mp.synchronize.Event) -> None:
    metrics.kv_blocks_freed(n)
    metrics.kv_blocks_freed(2)
    ready.set()
    done.wait(30)


def test_counter_from_a_child_process_is_served_by_the_parent(registry: CollectorRegistry) -> None:
    ctx = mp.get_context("fork")
    ready, done = ctx.Event(), ctx.Event()
    child = ctx.Process(target=_engine_core, args=(5, ready, done))
    child.start()
    try:
        assert ready.wait(30)
        metrics.kv_blocks_freed(1)  # this process counts too
        assert _scrape(registry)["localattn_kv_blocks_freed_total"] == 8.0
    finally:
        done.set()
        child.join(30)
    # a dead process's file no longer counts (its server is gone with it), and pruning removes it
    assert _scrape(registry)["localattn_kv_blocks_freed_total"] == 1.0
    assert metrics.prune_dead(Path(os.environ["LOCALATTN_METRICS_DIR"])) == 1
    assert _scrape(registry)["localattn_kv_blocks_freed_total"] == 1.0


def test_files_of_unrelated_processes_are_ignored(registry: CollectorRegistry, tmp_path: Path) -> None:
    stranger = MmapedDict(str(tmp_path / "counter_1.db"))  # pid 1 is alive but not our descendant
    key = mmap_key(metrics.KV_BLOCKS_FREED, metrics.KV_BLOCKS_FREED + "_total", [], [], "x")
    stranger.write_value(key, 1000.0, 0.0)
    stranger.close()
    metrics.kv_blocks_freed(3)
    assert _scrape(registry)["localattn_kv_blocks_freed_total"] == 3.0


def test_config_info_and_probe_gauges(registry: CollectorRegistry) -> None:
    cfg = config.parse({"windowSize": 256, "sinkTokens": 4, "globalLayers": {"indices": [0, 3]},
                        "minContextLength": 128})
    metrics.register_config_info(cfg)
    metrics.register_config_info(cfg)  # idempotent (vLLM loads plugins more than once)
    metrics.set_probe_result(12.5, 0.75)
    metrics.probe_failed()
    metrics.set_probe_age(4.0)
    got = _scrape(registry)
    info = ('localattn_config_info{enabled="true",global_layers="0,3",min_context_length="128",'
            'sinks="4",window="256"}')
    assert got[info] == 1.0
    assert got["localattn_kv_blocks_freed_total"] == 0.0
    assert got["localattn_probe_perplexity"] == 12.5
    assert got["localattn_probe_exact_match"] == 0.75
    assert got["localattn_probe_age_seconds"] == 4.0
    assert got['localattn_probe_runs_total{outcome="ok"}'] == 1.0
    assert got['localattn_probe_runs_total{outcome="error"}'] == 1.0


def test_every_rule_is_rendered(registry: CollectorRegistry) -> None:
    cfg = config.parse({"globalLayers": {"every": 4, "offset": 1}})
    assert metrics.format_global_layers(cfg) == "every=4,offset=1"


def test_process_tree() -> None:
    assert metrics.in_process_tree(os.getpid(), os.getpid())
    assert not metrics.in_process_tree(1, os.getpid())
    assert metrics.in_process_tree(os.getpid(), 1) or os.getpid() == 1
