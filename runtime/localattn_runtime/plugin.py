"""`register()`: what the vLLM general plugin does in each vLLM process (API server, engine core, worker).

Idempotent (vLLM loads plugins in every process, sometimes more than once). With no configuration in the
environment it does nothing, so an image with the plugin installed still runs stock vLLM. A bad configuration
raises `ConfigError` here, which vLLM does not catch: the server fails at startup with a message naming the field.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import sys
from collections.abc import Mapping

from localattn_runtime import config as _config
from localattn_runtime.config import LocalAttnConfig

log = logging.getLogger(__name__)

#: vLLM minor versions whose internals (backend registry, KV cache spec registry, CPU/Triton backends) this
#: plugin is written and tested against (docs/runtime.md, "Supported vLLM versions"). Any other version is
#: refused at start-up: the plugin subclasses internals that change between minors, and a mismatch shows up as
#: wrong attention or a scheduler crash long after start, not as an import error.
SUPPORTED_VLLM = ("0.32.",)

#: Set to 1 to run on an unsupported vLLM anyway (a warning instead of the refusal): for trying a new vLLM.
ENV_ALLOW_UNSUPPORTED = "LOCALATTN_ALLOW_UNSUPPORTED_VLLM"

BACKEND_CPU = "localattn_runtime.backend.LocalAttnBackend"
BACKEND_GPU = "localattn_runtime.backend_gpu.LocalAttnTritonBackend"

_state: dict[str, object] = {}


def active_config() -> LocalAttnConfig | None:
    """This process's configuration, read from the environment once."""
    if "config" not in _state:
        _state["config"] = _config.load()
    cfg = _state["config"]
    assert cfg is None or isinstance(cfg, LocalAttnConfig)
    return cfg


def reset_for_tests() -> None:
    """Forget the cached configuration (tests change the environment between cases)."""
    _state.pop("config", None)


def _is_api_server() -> bool:
    """The `vllm serve` front-end process (not the engine core, not a worker, not an offline `LLM`)."""
    if multiprocessing.parent_process() is not None:
        return False
    argv = sys.argv
    return (len(argv) > 1 and argv[1] == "serve") or any("entrypoints.openai.api_server" in a for a in argv[:3])


def vllm_supported(version: str) -> bool:
    return version.startswith(SUPPORTED_VLLM)


class UnsupportedVLLMError(RuntimeError):
    """The installed vLLM is not one this plugin supports (and the override is not set)."""


def check_vllm_version(version: str, env: Mapping[str, str] | None = None) -> None:
    """Refuse an unsupported vLLM with a message saying what to do; warn only under the override."""
    env = os.environ if env is None else env
    if vllm_supported(version):
        return
    supported = ", ".join(v + "x" for v in SUPPORTED_VLLM)
    if env.get(ENV_ALLOW_UNSUPPORTED) == "1":
        log.warning("localattn: vLLM %s is unsupported (supported: %s); running anyway because %s=1",
                    version, supported, ENV_ALLOW_UNSUPPORTED)
        return
    raise UnsupportedVLLMError(
        f"localattn: vLLM {version} is not supported (supported: {supported}). The attention backend and KV "
        f"manager subclass vLLM internals that change between versions; install a supported vLLM, or set "
        f"{ENV_ALLOW_UNSUPPORTED}=1 to try this one anyway")


def _check_vllm_version() -> None:
    import vllm

    check_vllm_version(vllm.__version__)


def _register_backends() -> None:
    from vllm.platforms import current_platform
    from vllm.v1.attention.backends.registry import AttentionBackendEnum, register_backend

    if current_platform.is_cpu():
        register_backend(AttentionBackendEnum.CPU_ATTN, BACKEND_CPU)
    else:
        # On GPU the backend is chosen with `--attention-backend CUSTOM`.
        register_backend(AttentionBackendEnum.CUSTOM, BACKEND_GPU)


def _register_metrics(cfg: LocalAttnConfig) -> None:
    try:
        from localattn_runtime import metrics
    except ImportError:  # metrics are optional for the attention path
        log.warning("localattn: metrics module unavailable; metrics not registered")
        return
    metrics.register_config_info(cfg)


def _start_probe(cfg: LocalAttnConfig) -> None:
    from localattn_runtime import probe

    probe.start_background(cfg)


def register() -> None:
    """Parse and validate the configuration, then register backend, KV spec/manager, metrics and probe."""
    if _state.get("registered"):
        return
    if not _is_api_server():  # the model runs in the engine/worker processes, not the front end
        from localattn_runtime import faults

        faults.install()  # test-only fault injection: nothing unless LOCALATTN_TEST_DELAY_MS is set
    cfg = active_config()
    if cfg is None:
        _state["registered"] = True
        return
    if cfg.enabled:
        _check_vllm_version()
        _register_backends()
        from localattn_runtime import kv

        kv.register_spec()
        kv.install_spec_hook()
    _register_metrics(cfg)
    if cfg.probe.enabled and _is_api_server():
        _start_probe(cfg)
    _state["registered"] = True
    log.info("localattn: registered (window=%d sinks=%d globalLayers=%s minContextLength=%d enabled=%s)",
             cfg.window_size, cfg.sink_tokens, cfg.global_layers, cfg.min_context_length, cfg.enabled)
