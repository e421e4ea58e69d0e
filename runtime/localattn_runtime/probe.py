"""The quality probe: a background thread in the API-server process that scores a golden set over HTTP.

Why over HTTP against our own server: it measures exactly what users get (the same engine, plugin and
configuration), with no second copy of the model. It must not starve user traffic, so it sends one request at
a time, with a pause between requests, bounded work per run (the golden set is small and prompts are scored
with `max_tokens=1`), and sleeps `intervalSeconds` between runs.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import localattn_contract as contract
from localattn_runtime import golden, metrics

log = logging.getLogger("localattn.probe")

PAUSE_BETWEEN_REQUESTS_S = 0.05


@dataclass(frozen=True)
class ProbeResult:
    perplexity: float
    exact_match: float
    tokens_scored: int
    # length_bucket label -> (perplexity, exact match), NaN where the bucket had nothing to score. Perplexity by
    # the context each token was predicted from (below the window local attention changes nothing, beyond it
    # everything); exact match by the prompt's length. The same buckets as the latency histogram.
    by_bucket: dict[str, tuple[float, float]] = field(default_factory=dict)


# --- pure scoring -------------------------------------------------------------------------------------------


def perplexity(logprob_lists: Sequence[Sequence[float]]) -> float:
    """Token-weighted perplexity over several texts' per-token log-probabilities."""
    total = sum(sum(lps) for lps in logprob_lists)
    n = sum(len(lps) for lps in logprob_lists)
    if n == 0:
        return float("nan")
    return math.exp(-total / n)


def perplexity_by_bucket(logprob_lists: Sequence[Sequence[float]], boundaries: Sequence[int]) -> dict[str, float]:
    """Token-weighted perplexity per context-length bucket: entry j of a text's list (prompt_token_logprobs
    drops the first token, which nothing predicts) is predicted from j + 1 tokens of context."""
    buckets: dict[str, list[float]] = {label: [] for label in contract.bucket_labels(boundaries)}
    for lps in logprob_lists:
        for j, lp in enumerate(lps):
            buckets[contract.bucket_of(j + 1, boundaries)].append(lp)
    return {label: perplexity([lps]) for label, lps in buckets.items()}


def completion_matches(generated: str, expected: str) -> bool:
    """Exact match of a greedy completion (same max_tokens as the golden set was built with)."""
    return generated == expected


def prompt_token_logprobs(choice: dict[str, Any]) -> list[float]:
    """The prompt tokens' log-probabilities from a vLLM completion choice (`prompt_logprobs`).

    Each entry maps token id -> {logprob, rank, ...}; the actual prompt token comes first (with
    `prompt_logprobs: 0` it is the only one). The first entry (BOS, nothing predicts it) is None.
    """
    out = []
    for entry in choice.get("prompt_logprobs") or []:
        if entry:
            out.append(float(next(iter(entry.values()))["logprob"]))
    return out


# --- HTTP client --------------------------------------------------------------------------------------------


class Client:
    """A tiny synchronous OpenAI-API client for the local server (stdlib only: it runs in a thread)."""

    def __init__(self, base_url: str, timeout_s: float = 60.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self._model: str | None = None

    def _request(self, path: str, body: dict[str, Any] | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base_url + path, data=data,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
            return json.loads(resp.read() or b"null")

    def ready(self) -> bool:
        try:
            urllib.request.urlopen(self.base_url + "/health", timeout=5).close()
            return True
        except (urllib.error.URLError, OSError):
            return False

    def model(self) -> str:
        if self._model is None:
            self._model = str(self._request("/v1/models")["data"][0]["id"])
        return self._model

    def prompt_logprobs(self, text: str) -> list[float]:
        """Teacher-forced log-probabilities of `text`'s tokens (one prefill, one generated token)."""
        resp = self._request("/v1/completions", {"model": self.model(), "prompt": text, "max_tokens": 1,
                                                 "temperature": 0, "prompt_logprobs": 0})
        return prompt_token_logprobs(resp["choices"][0])

    def greedy(self, prompt: str, max_tokens: int) -> tuple[str, int]:
        """The greedy completion and the prompt's length in tokens."""
        resp = self._request("/v1/completions", {"model": self.model(), "prompt": prompt,
                                                 "max_tokens": max_tokens, "temperature": 0})
        return str(resp["choices"][0]["text"]), int((resp.get("usage") or {}).get("prompt_tokens") or 0)


def score(client: Client, gold: golden.GoldenSet, max_tokens: int,
          pause_s: float = PAUSE_BETWEEN_REQUESTS_S, boundaries: Sequence[int] = ()) -> ProbeResult:
    """One probe run: every text and prompt, one request at a time; per bucket too when `boundaries` are set."""
    lps = []
    for text in gold.perplexity_texts:
        lps.append(client.prompt_logprobs(text))
        time.sleep(pause_s)
    outcomes: list[tuple[int, bool]] = []
    for item in gold.exact_match:
        text, prompt_tokens = client.greedy(item.prompt, max_tokens)
        outcomes.append((prompt_tokens, completion_matches(text, item.expected)))
        time.sleep(pause_s)
    em = sum(ok for _, ok in outcomes) / len(outcomes) if outcomes else float("nan")
    by_bucket: dict[str, tuple[float, float]] = {}
    if boundaries:
        ppl = perplexity_by_bucket(lps, boundaries)
        for label in contract.bucket_labels(boundaries):
            hits = [ok for n, ok in outcomes if contract.bucket_of(n, boundaries) == label]
            by_bucket[label] = (ppl[label], sum(hits) / len(hits) if hits else float("nan"))
    return ProbeResult(perplexity(lps), em, sum(len(x) for x in lps), by_bucket)


# --- the background thread ----------------------------------------------------------------------------------


def server_url(argv: Sequence[str] | None = None, env: dict[str, str] | None = None) -> str:
    """The local server's URL: `LOCALATTN_PROBE_URL`, else `--host/--port` of `vllm serve` (default 8000)."""
    env = dict(os.environ) if env is None else env
    if env.get("LOCALATTN_PROBE_URL"):
        return env["LOCALATTN_PROBE_URL"]
    argv = list(sys.argv if argv is None else argv)
    port, host = "8000", "127.0.0.1"
    for i, a in enumerate(argv):
        if a.startswith("--port="):
            port = a.split("=", 1)[1]
        elif a == "--port" and i + 1 < len(argv):
            port = argv[i + 1]
        elif a.startswith("--host="):
            host = a.split("=", 1)[1] or host
        elif a == "--host" and i + 1 < len(argv):
            host = argv[i + 1]
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    return f"http://{host}:{port}"


class ProbeThread(threading.Thread):
    """Runs the probe every `interval_s` once the server answers `/health`; ticks the age gauge each second."""

    def __init__(self, client: Client, golden_file: str, interval_s: float, max_tokens: int,
                 boundaries: Sequence[int] = ()) -> None:
        super().__init__(name="localattn-probe", daemon=True)
        self.client = client
        self.boundaries = list(boundaries)
        self.golden_file = golden_file
        self.interval_s = interval_s
        self.max_tokens = max_tokens
        self.stop_event = threading.Event()
        self.last_result: ProbeResult | None = None

    def run(self) -> None:
        while not self.stop_event.is_set() and not self.client.ready():
            self.stop_event.wait(1.0)
        last_ok: float | None = None
        next_run = time.monotonic()
        while not self.stop_event.is_set():
            if time.monotonic() >= next_run:
                last_ok = self._run_once() or last_ok
                next_run = time.monotonic() + self.interval_s
            if last_ok is not None:
                metrics.set_probe_age(time.monotonic() - last_ok)
            self.stop_event.wait(min(1.0, max(0.0, next_run - time.monotonic())))

    def _run_once(self) -> float | None:
        try:
            gold = golden.load(self.golden_file)  # re-read: the mounted ConfigMap may change
            result = score(self.client, gold, self.max_tokens, boundaries=self.boundaries)
        except Exception as e:  # the probe must never take the server down
            log.warning("localattn probe run failed: %s", e)
            metrics.probe_failed()
            return None
        self.last_result = result
        metrics.set_probe_result(result.perplexity, result.exact_match, result.by_bucket)
        log.info("localattn probe: perplexity %.3f exact match %.2f", result.perplexity, result.exact_match)
        return time.monotonic()

    def stop(self) -> None:
        self.stop_event.set()


_thread: ProbeThread | None = None
_lock = threading.Lock()


def start_background(cfg: Any) -> ProbeThread:
    """Start the probe once per process (idempotent); `cfg` is the plugin's LocalAttnConfig."""
    global _thread
    with _lock:
        if _thread is None or not _thread.is_alive():
            p = cfg.probe
            _thread = ProbeThread(Client(server_url()), p.golden_set_file, p.interval_seconds, p.max_tokens,
                                  cfg.bucket_boundaries())
            _thread.start()
            log.info("localattn probe started against %s every %ss", _thread.client.base_url, p.interval_seconds)
        return _thread
