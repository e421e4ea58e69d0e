"""The plugin configuration: parsing, validation errors that name the field, plan files, environment, and an
idempotent `register()`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from localattn_runtime import config
from localattn_runtime.config import ConfigError, GlobalLayers, LocalAttnConfig


def test_full_example_parses() -> None:
    cfg = config.parse({
        "enabled": True, "windowSize": 512, "sinkTokens": 4, "globalLayers": {"indices": [3, 0]},
        "minContextLength": 1024,
        "probe": {"enabled": True, "intervalSeconds": 30, "goldenSetFile": "/g.json", "maxTokens": 8},
    })
    assert cfg.window_size == 512 and cfg.sink_tokens == 4 and cfg.min_context_length == 1024
    assert cfg.global_layers == GlobalLayers(indices=(0, 3))
    assert cfg.probe.enabled and cfg.probe.interval_seconds == 30.0 and cfg.probe.max_tokens == 8
    assert config.parse(cfg.to_json()) == cfg


def test_defaults() -> None:
    cfg = config.parse({})
    assert cfg == LocalAttnConfig()
    assert cfg.enabled and cfg.window_size == 512 and cfg.sink_tokens == 4 and not cfg.probe.enabled
    assert cfg.global_layer_set(32) == frozenset()


def test_every_rule() -> None:
    cfg = config.parse({"globalLayers": {"every": 4, "offset": 1}})
    assert cfg.global_layer_set(10) == {1, 5, 9}
    assert config.parse(cfg.to_json()) == cfg
    assert config.parse({"globalLayers": {"every": 3}}).global_layer_set(7) == {0, 3, 6}


@pytest.mark.parametrize(("obj", "field"), [
    ({"windowSize": 0}, "windowSize"),
    ({"windowSize": "512"}, "windowSize"),
    ({"windowSize": True}, "windowSize"),
    ({"sinkTokens": -1}, "sinkTokens"),
    ({"minContextLength": -5}, "minContextLength"),
    ({"enabled": "yes"}, "enabled"),
    ({"window": 512}, "window"),
    ({"globalLayers": {"indices": [0, -1]}}, "globalLayers.indices[1]"),
    ({"globalLayers": {"indices": [2, 2]}}, "globalLayers.indices"),
    ({"globalLayers": {"every": 0}}, "globalLayers.every"),
    ({"globalLayers": {"every": 2, "indices": [1]}}, "globalLayers"),
    ({"globalLayers": {"offset": 1}}, "globalLayers.offset"),
    ({"globalLayers": {"layers": [1]}}, "globalLayers.layers"),
    ({"probe": {"intervalSeconds": 0}}, "probe.intervalSeconds"),
    ({"probe": {"maxTokens": 0}}, "probe.maxTokens"),
    ({"probe": {"goldenSet": "x"}}, "probe.goldenSet"),
    ({"planFile": ""}, "planFile"),
    ([1, 2], "(root)"),
])
def test_errors_name_the_field(obj: Any, field: str) -> None:
    with pytest.raises(ConfigError) as e:
        config.parse(obj)
    assert e.value.field == field
    assert str(e.value).startswith(f"localattn config: {field}: ")


def test_layer_beyond_model() -> None:
    cfg = config.parse({"globalLayers": {"indices": [0, 4]}})
    cfg.validate_for_model(5)
    with pytest.raises(ConfigError, match=r"globalLayers.indices: layer 4 is beyond the model's 4 layers"):
        cfg.validate_for_model(4)
    with pytest.raises(ConfigError, match=r"globalLayers\.offset"):
        config.parse({"globalLayers": {"every": 2, "offset": 4}}).validate_for_model(4)


def test_plan_file_global_layers_win(tmp_path: Path) -> None:
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"model": "m", "windowSize": 64, "sinkTokens": 4, "budget": 2,
                                "globalLayers": [2, 1], "layers": [{"index": 0, "outsideMass": 0.1}]}))
    cfg = config.parse({"globalLayers": {"every": 4}, "planFile": str(plan)})
    assert cfg.global_layers == GlobalLayers(indices=(1, 2))
    assert cfg.plan_file == str(plan)


@pytest.mark.parametrize(("content", "message"), [
    (None, "cannot read"),
    ("{not json", "not valid JSON"),
    ('{"layers": []}', "no globalLayers list"),
    ('{"globalLayers": [-3]}', "globalLayers"),
])
def test_bad_plan_file(tmp_path: Path, content: str | None, message: str) -> None:
    plan = tmp_path / "plan.json"
    if content is not None:
        plan.write_text(content)
    with pytest.raises(ConfigError, match=message) as e:
        config.parse({"planFile": str(plan)})
    assert e.value.field == "planFile"


def test_load_from_environment(tmp_path: Path) -> None:
    f = tmp_path / "localattn.json"
    f.write_text(json.dumps({"windowSize": 256}))
    assert config.load({}) is None
    assert config.load({"LOCALATTN_CONFIG": str(f)}) == config.parse({"windowSize": 256})
    both = {"LOCALATTN_CONFIG": str(f), "LOCALATTN_CONFIG_JSON": '{"windowSize": 128}'}
    cfg = config.load(both)
    assert cfg is not None and cfg.window_size == 128  # inline JSON wins
    with pytest.raises(ConfigError) as e:
        config.load({"LOCALATTN_CONFIG_JSON": "{"})
    assert e.value.field == "LOCALATTN_CONFIG_JSON"
    with pytest.raises(ConfigError) as e:
        config.load({"LOCALATTN_CONFIG": str(tmp_path / "missing.json")})
    assert e.value.field == "LOCALATTN_CONFIG"


def test_register_twice_is_idempotent(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch
    from vllm.v1.attention.backends.registry import AttentionBackendEnum
    from vllm.v1.kv_cache_interface import FullAttentionSpec
    from vllm.v1.kv_cache_spec_registry import KVCacheSpecRegistry

    from localattn_runtime import kv, plugin

    monkeypatch.setenv("LOCALATTN_CONFIG_JSON", json.dumps({"windowSize": 64}))
    monkeypatch.setattr(plugin, "_state", {})
    was_overridden = AttentionBackendEnum.CPU_ATTN.is_overridden()
    plugin.register()
    plugin.register()
    monkeypatch.setattr(plugin, "_state", {})  # and a second load in the same process (vLLM may re-run it)
    plugin.register()
    assert AttentionBackendEnum.CPU_ATTN.get_path() == plugin.BACKEND_CPU
    spec = kv.SinkWindowSpec(block_size=32, num_kv_heads=2, head_size=32, dtype=torch.float32,
                             sliding_window=64, sink_tokens=4)
    assert KVCacheSpecRegistry.get_manager_class(spec) is kv.SinkWindowManager
    full = FullAttentionSpec(block_size=32, num_kv_heads=2, head_size=32, dtype=spec.dtype)
    manager = KVCacheSpecRegistry.get_manager_class(full)
    assert manager is not None and manager.__name__ == "FullAttentionManager"  # built-ins intact
    if not was_overridden:  # leave the process as we found it for other in-process vLLM users
        AttentionBackendEnum.CPU_ATTN.clear_override()


def test_no_configuration_means_stock(monkeypatch: pytest.MonkeyPatch) -> None:
    from localattn_runtime import plugin

    monkeypatch.delenv("LOCALATTN_CONFIG", raising=False)
    monkeypatch.delenv("LOCALATTN_CONFIG_JSON", raising=False)
    monkeypatch.setattr(plugin, "_state", {})
    plugin.register()
    assert plugin.active_config() is None


def test_bad_environment_fails_register(monkeypatch: pytest.MonkeyPatch) -> None:
    from localattn_runtime import plugin

    monkeypatch.setenv("LOCALATTN_CONFIG_JSON", json.dumps({"sinkTokens": -1}))
    monkeypatch.setattr(plugin, "_state", {})
    with pytest.raises(ConfigError, match="sinkTokens"):
        plugin.register()


def test_installed_vllm_is_supported() -> None:
    import vllm

    from localattn_runtime import plugin

    assert plugin.vllm_supported(vllm.__version__), vllm.__version__
    assert not plugin.vllm_supported("0.31.2")


def test_unsupported_vllm_is_refused_unless_overridden(caplog: pytest.LogCaptureFixture) -> None:
    from localattn_runtime import plugin

    plugin.check_vllm_version("0.32.0", {})
    plugin.check_vllm_version("0.32.7", {})
    for version in ("0.33.0", "0.31.2", "1.0.0"):
        with pytest.raises(plugin.UnsupportedVLLMError, match=rf"vLLM {version} is not supported.*0\.32\.x.*"
                                                             rf"LOCALATTN_ALLOW_UNSUPPORTED_VLLM=1"):
            plugin.check_vllm_version(version, {})
    with caplog.at_level("WARNING", logger="localattn_runtime.plugin"):
        plugin.check_vllm_version("0.33.0", {"LOCALATTN_ALLOW_UNSUPPORTED_VLLM": "1"})
    assert "unsupported" in caplog.text


def test_register_refuses_an_unsupported_vllm(monkeypatch: pytest.MonkeyPatch) -> None:
    """At start-up, through `register()` as vLLM calls it: the refusal, then the override."""
    import vllm

    from localattn_runtime import plugin

    monkeypatch.setenv("LOCALATTN_CONFIG_JSON", json.dumps({"windowSize": 64}))
    monkeypatch.setattr(plugin, "_state", {})
    monkeypatch.setattr(vllm, "__version__", "0.33.0")
    monkeypatch.delenv(plugin.ENV_ALLOW_UNSUPPORTED, raising=False)
    with pytest.raises(plugin.UnsupportedVLLMError):
        plugin.register()
    monkeypatch.setattr(plugin, "_state", {})
    monkeypatch.setenv(plugin.ENV_ALLOW_UNSUPPORTED, "1")
    monkeypatch.setattr(plugin, "_register_backends", lambda: None)  # leave vLLM's backend registry alone
    plugin.register()
    assert plugin._state.get("registered")


def test_config_file_paths_resolve_under_the_dev_clusters_pod_root(tmp_path) -> None:
    """Process-mode pods have no mount namespace: an in-container path in the config file that does not exist
    is looked up under LOCALATTN_DEV_FS_ROOT; an existing path, or no root, leaves it as written."""
    from localattn_runtime.config import container_path

    (tmp_path / "etc" / "golden").mkdir(parents=True)
    (tmp_path / "etc" / "golden" / "set.json").write_text("{}")
    env = {"LOCALATTN_DEV_FS_ROOT": str(tmp_path)}
    assert container_path("/etc/golden/set.json", env) == str(tmp_path / "etc" / "golden" / "set.json")
    assert container_path("/etc/golden/set.json", {}) == "/etc/golden/set.json"
    assert container_path(str(tmp_path / "etc"), env) == str(tmp_path / "etc")  # exists: as written
    assert container_path("relative.json", env) == "relative.json"
