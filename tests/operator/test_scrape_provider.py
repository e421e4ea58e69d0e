"""The scrape provider's I/O rules with an injected fetch and clock (the real HTTP path: test_providers_prometheus)."""

from __future__ import annotations

import socket

import pytest

from localattn_operator.metrics_provider import ProviderError
from localattn_operator.providers.scrape import ScrapeProvider, ScrapeTarget, fetch_text, target
from localattn_operator.providers.scrape_eval import ScrapeState

A = ScrapeTarget("llm-canary-a", "http://127.1.1.2:8000/metrics")
B = ScrapeTarget("llm-canary-b", "http://127.1.1.3:8000/metrics")
PARAMS = {"namespace": "ns", "lad": "llm", "revision": "bbbb"}


def body(tokens: float) -> str:
    return f"# TYPE vllm:generation_tokens_total counter\nvllm:generation_tokens_total{{engine=\"0\"}} {tokens}\n"


class Fake:
    """Bodies per URL as a function of the fake clock; URLs in `down` raise like an unreachable pod."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.calls: list[str] = []
        self.down: set[str] = set()

    def fetch(self, url: str, timeout: float) -> str:
        self.calls.append(url)
        if url in self.down:
            raise ProviderError(f"{url}: unreachable")
        slope = 10.0 if url == A.url else 30.0
        return body(slope * self.now)

    def provider(self, state: ScrapeState) -> ScrapeProvider:
        return ScrapeProvider({"bbbb": [A, B]}, state, clock=lambda: self.now, fetch=self.fetch)


def test_rates_over_two_passes_and_one_scrape_per_pod_per_pass() -> None:
    fake, state = Fake(), ScrapeState()
    assert fake.provider(state).sample() == {}
    fake.now += 60
    provider = fake.provider(state)
    assert provider.query("tokens_per_pod_second", PARAMS, 60) == pytest.approx((10 + 30) / 2)
    assert provider.query("tokens_per_pod_second", PARAMS, 60) == pytest.approx(20)
    assert fake.calls.count(A.url) == 2 and fake.calls.count(B.url) == 2  # start pass + end pass


def test_no_earlier_scrape_is_a_provider_error_not_a_zero() -> None:
    fake, state = Fake(), ScrapeState()
    with pytest.raises(ProviderError, match="no earlier scrape"):
        fake.provider(state).query("tokens_per_pod_second", PARAMS, 60)


def test_a_pod_that_does_not_answer_is_left_out_and_all_down_is_an_error() -> None:
    fake, state = Fake(), ScrapeState()
    fake.provider(state).sample()
    fake.now += 60
    fake.down = {B.url}
    assert fake.provider(state).query("tokens_per_pod_second", PARAMS, 60) == pytest.approx(10)
    fake.now += 60
    fake.down = {A.url, B.url}
    with pytest.raises(ProviderError, match="no pod of revision bbbb answered"):
        fake.provider(state).query("tokens_per_pod_second", PARAMS, 60)


def test_an_arm_without_pods_is_no_data() -> None:
    fake = Fake()
    assert fake.provider(ScrapeState()).query("requests", {**PARAMS, "revision": "other"}, 60) is None


def test_target_urls_from_pod_ip_and_annotations() -> None:
    assert target("p", "127.1.2.5", 8000).url == "http://127.1.2.5:8000/metrics"
    assert target("p", "fd00::5", 8000, "/m").url == "http://[fd00::5]:8000/m"


def test_fetch_of_a_pod_that_never_answers_times_out() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        with pytest.raises(ProviderError, match=r"no answer within 0\.3s"):
            fetch_text(f"http://127.0.0.1:{listener.getsockname()[1]}/metrics", 0.3)
