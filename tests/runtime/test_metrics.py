"""Our metrics reach the serving process's registry from any process of its tree (as from vLLM's engine core)."""

from __future__ import annotations

import multiprocessing as mp
import os
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.mmap_dict import MmapedDict, mmap_key

import localattn_contract as contract
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
    stranger = MmapedDict(str(tmp_path / "counter_localattn1.db"))  # pid 1 is alive but not our descendant
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


def test_probe_gauges_per_length_bucket_and_empty_buckets_left_out(registry: CollectorRegistry) -> None:
    """What the operator's bucket_probe_* queries read (`length_bucket="0-256"`), beside the aggregate (no label);
    a bucket with nothing scored is absent (missing data for the gate), never NaN."""
    metrics.set_probe_result(12.5, 0.75, {"0-256": (11.0, 1.0), "256-inf": (15.0, float("nan"))})
    got = _scrape(registry)
    assert got["localattn_probe_perplexity"] == 12.5
    assert got['localattn_probe_perplexity{length_bucket="0-256"}'] == 11.0
    assert got['localattn_probe_perplexity{length_bucket="256-inf"}'] == 15.0
    assert got['localattn_probe_exact_match{length_bucket="0-256"}'] == 1.0
    assert 'localattn_probe_exact_match{length_bucket="256-inf"}' not in got


def test_every_rule_is_rendered(registry: CollectorRegistry) -> None:
    cfg = config.parse({"globalLayers": {"every": 4, "offset": 1}})
    assert metrics.format_global_layers(cfg) == "every=4,offset=1"


def test_process_tree() -> None:
    assert metrics.in_process_tree(os.getpid(), os.getpid())
    assert not metrics.in_process_tree(1, os.getpid())
    assert metrics.in_process_tree(os.getpid(), 1) or os.getpid() == 1


def test_our_files_never_take_prometheus_clients_own_names(registry: CollectorRegistry, tmp_path: Path) -> None:
    """With PROMETHEUS_MULTIPROC_DIR, prometheus_client writes KIND_PID.db for this very process: ours differ."""
    theirs = tmp_path / f"counter_{os.getpid()}.db"
    theirs.write_bytes(b"")
    metrics.kv_blocks_freed(2)
    metrics.observe_request(10, 0.4, [64])
    assert theirs.exists()  # not deleted, not written
    assert theirs.stat().st_size == 0
    assert sorted(f.name for f in tmp_path.glob("*_localattn*.db")) == [
        f"counter_localattn{os.getpid()}.db", f"histogram_localattn{os.getpid()}.db"]


def _served_requests(n_short: int, ready: mp.synchronize.Event, done: mp.synchronize.Event) -> None:
    for _ in range(n_short):
        metrics.observe_request(100, 0.4, [256, 1024])  # below the window
    metrics.observe_request(256, 3.0, [256, 1024])  # exactly W: the first bucket beyond it
    ready.set()
    done.wait(30)


def test_latency_histogram_by_length_bucket_from_a_child_process(registry: CollectorRegistry) -> None:
    ctx = mp.get_context("fork")
    ready, done = ctx.Event(), ctx.Event()
    child = ctx.Process(target=_served_requests, args=(3, ready, done))
    child.start()
    try:
        assert ready.wait(30)
        metrics.observe_request(5000, 1000.0, [256, 1024])  # far beyond 4W; this process counts too
        got = _scrape(registry)
    finally:
        done.set()
        child.join(30)
    name = "localattn_request_latency_seconds"

    def bucket(length: str, le: str) -> float:
        return got[f'{name}_bucket{{le="{le}",length_bucket="{length}"}}']

    assert got[f'{name}_count{{length_bucket="0-256"}}'] == 3.0
    assert got[f'{name}_sum{{length_bucket="0-256"}}'] == pytest.approx(1.2)
    assert bucket("0-256", "0.3") == 0.0 and bucket("0-256", "0.5") == 3.0  # cumulative le ladder
    assert bucket("0-256", "+Inf") == 3.0
    assert got[f'{name}_count{{length_bucket="256-1024"}}'] == 1.0
    assert bucket("256-1024", "2.5") == 0.0 and bucket("256-1024", "5.0") == 1.0
    assert bucket("1024-inf", "960.0") == 0.0 and bucket("1024-inf", "1920.0") == 1.0
    labels = {k.split('length_bucket="')[1].split('"')[0] for k in got if k.startswith(name)}
    assert labels == set(contract.bucket_labels([256, 1024]))  # the labels the operator queries


@pytest.mark.parametrize(("cfg", "edges"), [
    ({"windowSize": 512}, [512, 2048]),  # derived from the window: below / beyond / far beyond
    ({"windowSize": 512, "lengthBuckets": [256]}, [256]),  # what the operator renders from spec.analysis
])
def test_bucket_edges_come_from_the_configuration(cfg: dict[str, object], edges: list[int]) -> None:
    assert config.parse(cfg).bucket_boundaries() == edges
    assert config.parse(config.parse(cfg).to_json()) == config.parse(cfg)


@pytest.mark.parametrize(("value", "field"), [
    ([512, 512], "lengthBuckets[1]"), ([0], "lengthBuckets[0]"), ("512", "lengthBuckets"), ([True], "lengthBuckets[0]"),
])
def test_bad_length_buckets_name_the_field(value: object, field: str) -> None:
    with pytest.raises(config.ConfigError) as e:
        config.parse({"lengthBuckets": value})
    assert e.value.field == field


def test_stat_logger_observes_vllms_finished_requests(registry: CollectorRegistry,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The vLLM stat-logger plugin reads vLLM's own per-request figures (real vLLM stats classes)."""
    from vllm.v1.engine import FinishReason
    from vllm.v1.metrics.stats import FinishedRequestStats, IterationStats

    from localattn_runtime import plugin, stats

    monkeypatch.setenv("LOCALATTN_CONFIG_JSON", '{"windowSize": 64}')
    plugin.reset_for_tests()
    try:
        logger = stats.LengthBucketStatLogger(None, 0)
    finally:
        plugin.reset_for_tests()
    it = IterationStats()
    it.finished_requests = [FinishedRequestStats(FinishReason.LENGTH, e2e_latency=0.7, num_prompt_tokens=n)
                            for n in (10, 64, 300)]
    logger.record(None, it)
    logger.record(None, None)  # a scheduler-only update carries no requests
    got = _scrape(registry)
    counts = {b: got.get(f'localattn_request_latency_seconds_count{{length_bucket="{b}"}}')
              for b in ("0-64", "64-256", "256-inf")}
    assert counts == {"0-64": 1.0, "64-256": 1.0, "256-inf": 1.0}


def test_stat_logger_without_configuration_records_nothing(registry: CollectorRegistry,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from vllm.v1.engine import FinishReason
    from vllm.v1.metrics.stats import FinishedRequestStats, IterationStats

    from localattn_runtime import plugin, stats

    for var in ("LOCALATTN_CONFIG_JSON", "LOCALATTN_CONFIG"):
        monkeypatch.delenv(var, raising=False)
    plugin.reset_for_tests()
    logger = stats.LengthBucketStatLogger(None, 0)
    it = IterationStats()
    it.finished_requests = [FinishedRequestStats(FinishReason.STOP, e2e_latency=1.0, num_prompt_tokens=5)]
    logger.record(None, it)
    assert not any(k.startswith("localattn_request_latency") for k in _scrape(registry))


def test_stat_logger_is_registered_as_a_vllm_plugin() -> None:
    from importlib.metadata import entry_points

    from vllm.v1.metrics.loggers import load_stat_logger_plugin_factories

    from localattn_runtime import stats

    assert [e.value for e in entry_points(group="vllm.stat_logger_plugins") if e.name == "localattn"] == [
        "localattn_runtime.stats:LengthBucketStatLogger"]
    assert stats.LengthBucketStatLogger in load_stat_logger_plugin_factories()


def test_latency_buckets_are_vllms_own() -> None:
    """Our `le` ladder is vLLM's request-latency one, so per-bucket and aggregate p95 interpolate alike."""
    from vllm.v1.metrics.buckets import histogram_buckets

    assert tuple(histogram_buckets("request_latency")) == metrics.LATENCY_BUCKETS
