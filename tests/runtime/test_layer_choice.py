"""Which vLLM attention layers become local (`dispatch.local_layer_config`), on the objects vLLM hands the plugin:
a model with its own sliding-window layers must keep a global layer, and a layer name the plugin cannot place
fails loudly instead of silently staying global."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import pytest

from localattn_runtime import dispatch, layers, plugin
from localattn_runtime.config import ConfigError

N = 6


class _Impl:
    localattn_impl = True


def _model(windows: dict[int, int | None], prefix: str = "model.layers") -> tuple[Any, dict[str, Any]]:
    """A vLLM config and its attention modules, Gemma-3 style when some layers carry their own window."""
    modules = {f"{prefix}.{i}.self_attn.attn": SimpleNamespace(
        impl=_Impl(), attn_type="decoder", sliding_window=windows.get(i), layer_name=f"{prefix}.{i}.self_attn.attn",
        kv_cache_dtype="auto") for i in range(N)}
    cfg = SimpleNamespace(model_config=SimpleNamespace(hf_text_config=SimpleNamespace(num_hidden_layers=N)),
                          compilation_config=SimpleNamespace(static_forward_context=modules))
    return cfg, modules


@pytest.fixture
def configure(monkeypatch: pytest.MonkeyPatch) -> Any:
    def set_config(obj: dict[str, Any]) -> None:
        monkeypatch.setenv("LOCALATTN_CONFIG_JSON", json.dumps(obj))
        plugin.reset_for_tests()

    yield set_config
    plugin.reset_for_tests()


def test_plain_model_full_layers_become_local_except_global(configure: Any) -> None:
    configure({"windowSize": 64, "globalLayers": {"indices": [2]}})
    cfg, modules = _model({})
    local = [i for i, m in enumerate(modules.values()) if dispatch.local_layer_config(m, cfg) is not None]
    assert local == [0, 1, 3, 4, 5]


def test_own_window_model_without_global_layers_is_refused(configure: Any) -> None:
    configure({"windowSize": 64})
    cfg, modules = _model({i: 1024 for i in range(N) if i % 3 != 2})  # layers 2 and 5 are the model's global ones
    with pytest.raises(ConfigError, match=r"own sliding-window layers \(4 of 6\).*\[2, 5\]") as e:
        dispatch.local_layer_config(modules["model.layers.2.self_attn.attn"], cfg)
    assert e.value.field == "globalLayers"


def test_own_window_model_with_global_layers_keeps_them(configure: Any) -> None:
    configure({"windowSize": 64, "globalLayers": {"indices": [5]}})
    cfg, modules = _model({i: 1024 for i in range(N) if i % 3 != 2})
    got = {i: dispatch.local_layer_config(m, cfg) is not None for i, m in enumerate(modules.values())}
    assert got == {0: False, 1: False, 2: True, 3: False, 4: False, 5: False}  # own windows kept, 5 global


def test_all_own_window_model_is_left_alone(configure: Any) -> None:
    configure({"windowSize": 64})
    cfg, modules = _model(dict.fromkeys(range(N), 4096))  # Mistral style
    assert all(dispatch.local_layer_config(m, cfg) is None for m in modules.values())


def test_unrecognised_layer_name_fails_loudly(configure: Any) -> None:
    configure({"windowSize": 64})
    cfg, modules = _model({}, prefix="transformer.h")
    with pytest.raises(NotImplementedError, match=r"cannot tell which decoder layer 'transformer.h.0"):
        dispatch.local_layer_config(modules["transformer.h.0.self_attn.attn"], cfg)


def test_conflict_rule() -> None:
    assert layers.own_window_conflict(4, frozenset(), frozenset()) is None
    assert layers.own_window_conflict(4, frozenset({1}), frozenset({0, 2})) is None
    assert layers.own_window_conflict(4, frozenset(), frozenset({0, 1, 2, 3})) is None
    assert "[1, 3]" in (layers.own_window_conflict(4, frozenset(), frozenset({0, 2})) or "")
