"""Runs vLLM engines for the runtime tests in a fresh interpreter and records what the tests assert on.

vLLM registers plugins per process and memoises its backend choice, so the engines of one test module run
once, in one subprocess (this file as a script), sequentially and in-process (no engine-core or worker
processes: `VLLM_ENABLE_V1_MULTIPROCESSING=0`, executor "uni"), each with its own plugin configuration.
In-process also gives the tests vLLM's own scheduler and block pool to read (the KV accounting).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

GEN = 8  # tokens generated per request unless the engine spec says otherwise
W_REGISTER = 48  # any enabled config: registration needs one; each engine then sets its own


def run_engines(job: dict[str, Any], out: Path, timeout: int = 900) -> dict[str, Any]:
    """Run `job` in a fresh interpreter (this file as a script) and return its JSON results."""
    job_file = out.with_suffix(".job.json")
    job_file.write_text(json.dumps(job))
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
           "TOKENIZERS_PARALLELISM": "false"}
    env.pop("LOCALATTN_CONFIG", None)
    env.pop("LOCALATTN_CONFIG_JSON", None)
    proc = subprocess.run([sys.executable, __file__, str(job_file), str(out)], env=env, capture_output=True,
                          text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"engine runner failed ({proc.returncode}):\n{proc.stderr[-6000:]}")
    return dict(json.loads(out.read_text()))


def _engine(model: str, spec: dict[str, Any]) -> dict[str, Any]:
    from vllm import LLM, SamplingParams
    from vllm.v1.attention.backends.registry import AttentionBackendEnum, register_backend
    from vllm.v1.attention.selector import _cached_get_attn_backend

    from localattn_runtime import plugin

    if spec.get("config") is None:
        os.environ.pop("LOCALATTN_CONFIG_JSON", None)
        # Really stock: put vLLM's own CPU backend back for this engine.
        register_backend(AttentionBackendEnum.CPU_ATTN, "vllm.v1.attention.backends.cpu_attn.CPUAttentionBackend")
    else:
        os.environ["LOCALATTN_CONFIG_JSON"] = json.dumps(spec["config"])
        register_backend(AttentionBackendEnum.CPU_ATTN, plugin.BACKEND_CPU)
    plugin.reset_for_tests()
    _cached_get_attn_backend.cache_clear()  # vLLM memoises the backend class per process
    args = {"enforce_eager": True, "enable_prefix_caching": False, "dtype": "float32", "max_model_len": 2048,
            "seed": 0, "distributed_executor_backend": "uni", **spec.get("engine_args", {})}
    if "kv_cache_memory_bytes" in args:
        os.environ.pop("VLLM_CPU_KVCACHE_SPACE", None)  # the legacy variable would override the byte budget
    llm = LLM(model, **args)
    result: dict[str, Any] = {}
    try:
        if spec.get("trace"):
            result["trace"] = _trace(llm, spec)
        else:
            sp = SamplingParams(temperature=0, max_tokens=spec.get("max_tokens", GEN), logprobs=0,
                                prompt_logprobs=0 if spec.get("prompt_logprobs") else None)
            prompts: list[Any] = [{"prompt_token_ids": p} for p in spec["prompts"]]
            passes = [[_output(o) for o in llm.generate(prompts, sp, use_tqdm=False)]
                      for _ in range(spec.get("repeat", 1))]  # repeat: the later passes can hit the prefix cache
            result["outputs"] = passes[0]
            result["passes"] = passes
        from vllm.v1.core.kv_cache_utils import get_max_concurrency_for_kv_cache_config

        core = llm.llm_engine.engine_core.engine_core  # type: ignore[attr-defined]  # in-process client
        kv_config = core.scheduler.kv_cache_manager.kv_cache_config
        groups = kv_config.kv_cache_groups
        result["groups"] = [{"spec": type(g.kv_cache_spec).__name__, "layers": g.layer_names,
                             "block_size": g.kv_cache_spec.block_size} for g in groups]
        result["num_blocks"] = kv_config.num_blocks
        # A block ID belongs to one group at a time and holds one page per layer of the largest group.
        result["kv_bytes"] = kv_config.num_blocks * max(
            g.kv_cache_spec.page_size_bytes * len(g.layer_names) for g in groups)
        result["max_concurrency"] = get_max_concurrency_for_kv_cache_config(core.vllm_config, kv_config)
        result["compilation_mode"] = core.vllm_config.compilation_config.mode.name  # NONE: eager
    finally:
        llm.llm_engine.engine_core.shutdown()
        del llm
    return result


def _output(o: Any) -> dict[str, Any]:
    c = o.outputs[0]
    toks = list(c.token_ids)
    lps = [lp[t].logprob for lp, t in zip(c.logprobs, toks, strict=True)]
    plps = None
    if o.prompt_logprobs is not None:
        ids = o.prompt_token_ids
        plps = [None] + [o.prompt_logprobs[i][ids[i]].logprob for i in range(1, len(ids))]
    return {"tokens": toks, "logprobs": lps, "prompt_logprobs": plps, "cached": o.num_cached_tokens or 0}


def _trace(llm: Any, spec: dict[str, Any]) -> list[dict[str, Any]]:
    """Step the engine by hand and record vLLM's own block accounting after every step."""
    from vllm import SamplingParams

    engine = llm.llm_engine
    sched = engine.engine_core.engine_core.scheduler
    sp = SamplingParams(temperature=0, max_tokens=spec.get("max_tokens", GEN), ignore_eos=True)
    for i, p in enumerate(spec["prompts"]):
        engine.add_request(f"r{i}", {"prompt_token_ids": p}, sp)
    managers = sched.kv_cache_manager.coordinator.single_type_managers
    pool = sched.kv_cache_manager.block_pool
    steps: list[dict[str, Any]] = []
    while engine.has_unfinished_requests():
        engine.step()
        reqs = {}
        for r in sched.running:
            blocks = [[0 if b.is_null else 1 for b in m.req_to_blocks.get(r.request_id, [])] for m in managers]
            reqs[r.request_id] = {"computed": r.num_computed_tokens, "prompt": r.num_prompt_tokens,
                                  "blocks": blocks}
        steps.append({"running": len(sched.running), "waiting": len(sched.waiting), "reqs": reqs,
                      "free": pool.get_num_free_blocks(), "total": pool.num_gpu_blocks})
    return steps


def _main(job_file: str, out_file: str) -> None:
    job = json.loads(Path(job_file).read_text())
    from localattn_runtime import plugin

    # Register once (in this process: in-process engine core and worker) with any enabled config.
    os.environ["LOCALATTN_CONFIG_JSON"] = json.dumps({"windowSize": W_REGISTER})
    plugin.register()
    results = {spec["name"]: _engine(job["model"], spec) for spec in job["engines"]}
    Path(out_file).write_text(json.dumps(results))


if __name__ == "__main__":
    _main(sys.argv[1], sys.argv[2])
