"""A vLLM stat-logger plugin: each finished request's latency, by prompt-length bucket, on vLLM's `/metrics`.

Local attention only changes anything past the window, so an aggregate latency hides where it helps or hurts;
the operator compares arms per bucket (`localattn_request_latency_seconds{length_bucket=...}`). vLLM computes
every finished request's end-to-end latency and prompt length in the API-server process
(`IterationStats.finished_requests`) and hands them to the stat loggers of the `vllm.stat_logger_plugins` entry
point group, so this logger reads exactly the figures behind `vllm:e2e_request_latency_seconds`; no timing of
our own. With no localattn configuration in the environment it records nothing (stock vLLM stays stock).
"""

from __future__ import annotations

import logging
from typing import Any

from vllm.v1.metrics.loggers import StatLoggerBase

log = logging.getLogger(__name__)


class LengthBucketStatLogger(StatLoggerBase):
    """Observes `localattn_request_latency_seconds` for every finished request (one instance per engine)."""

    def __init__(self, vllm_config: Any, engine_index: int = 0) -> None:
        from localattn_runtime.plugin import active_config

        cfg = active_config()
        self.boundaries: list[int] | None = cfg.bucket_boundaries() if cfg is not None else None

    def record(self, scheduler_stats: Any, iteration_stats: Any, mm_cache_stats: Any = None,
               engine_idx: int = 0) -> None:
        if self.boundaries is None or iteration_stats is None:
            return
        try:
            from localattn_runtime import metrics

            for req in iteration_stats.finished_requests:
                metrics.observe_request(req.num_prompt_tokens, req.e2e_latency, self.boundaries)
        except Exception:  # metrics must never break serving
            log.debug("localattn: recording request latency failed", exc_info=True)

    def log_engine_initialized(self) -> None:
        pass
