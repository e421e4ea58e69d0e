"""Greedy completions from one serving pod, for the paired comparison (thin I/O: one POST per prompt).

The operator reaches the arms' pods directly, as the scrape provider does, so the same prompt goes to exactly
one stable and one canary pod (a Service would pick any). vLLM's OpenAI completions API, temperature 0, with
the chosen tokens' logprobs and their ids (`return_tokens_as_token_ids`): comparing ids, not detokenised text,
keeps two tokenisations of the same text from counting as agreement.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from localattn_operator.metrics_provider import ProviderError
from localattn_operator.paired import Completion

TIMEOUT_SECONDS = 60.0  # a CPU pod under load answers a 32-token completion in seconds; a hung one is a provider error


def greedy(base_url: str, model: str | None, prompt: str, max_tokens: int,
           timeout: float = TIMEOUT_SECONDS) -> tuple[int, Completion]:
    """(prompt tokens, the completion) from the pod at `base_url` (`http://ip:port`); ProviderError otherwise."""
    body: dict[str, Any] = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "logprobs": 1,
                            "return_tokens_as_token_ids": True}
    if model:
        body["model"] = model
    request = urllib.request.Request(f"{base_url}/v1/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            answer = json.loads(response.read())
    except (OSError, ValueError) as exc:  # URLError, HTTPError, timeouts, bad JSON
        raise ProviderError(f"{base_url}: completion failed: {exc}") from None
    return parse(answer)


def parse(answer: Any) -> tuple[int, Completion]:
    """vLLM's completion response -> (prompt tokens, token ids and logprobs of the first choice)."""
    try:
        choice = answer["choices"][0]
        logprobs = choice["logprobs"]
        ids = [int(str(t).removeprefix("token_id:")) for t in logprobs["tokens"]]
        values = [float(v) if v is not None else 0.0 for v in logprobs["token_logprobs"]]
        prompt_tokens = int(answer["usage"]["prompt_tokens"])
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise ProviderError(f"unexpected completion response ({type(exc).__name__}: {exc})") from None
    return prompt_tokens, Completion(ids, values)
