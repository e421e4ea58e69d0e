"""The scrape metrics provider: each arm's pods' `/metrics` read directly, no Prometheus needed.

The executor knows the arms' pods (it counts them for the observation), so it passes their metrics URLs in
(`targets`, by revision: the arm's selector). A rate needs two scrapes: the snapshots live in a `ScrapeState`
the executor owns and keeps across passes (one per LAD), so the executor calls `sample()` on the pass where a
window starts (and may on any pass: the history is short and bounded), and at the window's end `query`
scrapes once more and evaluates every named measurement over the two (`scrape_eval`, pure).

One provider object is made per pass: it scrapes each pod at most once (the first query of an arm), so the
dozen queries of `collect_arm` cost one request per pod. Pods are scraped in parallel, each with a timeout.
A pod that does not answer is left out, as Prometheus leaves out a target that is down; an arm none of whose
pods answer, or with no snapshot near the window's start, is a `ProviderError` (an Error: hold, not fail).
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from localattn_operator.metrics_provider import ProviderError
from localattn_operator.providers.scrape_eval import (
    PodWindow,
    ScrapeParseError,
    ScrapeState,
    Snapshot,
    evaluate,
    parse,
    window_of,
)

DEFAULT_TIMEOUT_SECONDS = 3.0
_MAX_BODY = 16 * 1024 * 1024
_MAX_PARALLEL = 8


@dataclass(frozen=True)
class ScrapeTarget:
    """One serving pod: its name (for messages) and its metrics URL, `http://POD_IP:PORT/metrics`."""

    pod: str
    url: str


def target(pod: str, pod_ip: str, port: int, path: str = "/metrics") -> ScrapeTarget:
    """The target of a pod from its IP and the `prometheus.io/port`/`path` annotations the operator renders."""
    host = f"[{pod_ip}]" if ":" in pod_ip else pod_ip
    return ScrapeTarget(pod, f"http://{host}:{port}{path}")


def fetch_text(url: str, timeout: float) -> str:
    """GET one `/metrics` body; ProviderError when the pod does not answer in time or not with 200."""
    request = urllib.request.Request(url, headers={"Accept": "text/plain;version=0.0.4"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = response.read(_MAX_BODY + 1)
    except urllib.error.HTTPError as exc:
        raise ProviderError(f"{url}: HTTP {exc.code}") from None
    except TimeoutError as exc:
        raise ProviderError(f"{url}: no answer within {timeout:g}s") from exc
    except urllib.error.URLError as exc:
        raise ProviderError(f"{url}: unreachable ({exc.reason})") from exc
    except (OSError, ValueError) as exc:
        raise ProviderError(f"{url}: {type(exc).__name__}: {exc}") from exc
    if len(body) > _MAX_BODY:
        raise ProviderError(f"{url}: metrics larger than {_MAX_BODY} bytes")
    return body.decode("utf-8", errors="replace")


class ScrapeProvider:
    """`MetricsProvider` over direct scrapes of `targets[revision]` (the arm's serving pods)."""

    name = "scrape"

    def __init__(
        self,
        targets: Mapping[str, Sequence[ScrapeTarget]],
        state: ScrapeState,
        *,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        clock: Callable[[], float] = time.time,
        fetch: Callable[[str, float], str] = fetch_text,
    ):
        self.targets = targets
        self.state = state
        self.timeout = timeout
        self.clock = clock
        self.fetch = fetch
        self._sampled: set[str] = set()
        self._failures: dict[str, str] = {}

    def sample(self, revisions: Sequence[str] | None = None) -> dict[str, str]:
        """Scrape the pods of `revisions` (default: every arm) now, once per provider; returns failures by pod."""
        wanted = [t for rev in (revisions if revisions is not None else list(self.targets))
                  for t in self.targets.get(rev, ()) if t.url not in self._sampled]
        if wanted:
            with ThreadPoolExecutor(max_workers=min(_MAX_PARALLEL, len(wanted))) as pool:
                results = list(pool.map(self._scrape_one, wanted))
            for t, failure in zip(wanted, results, strict=True):
                self._sampled.add(t.url)
                if failure is not None:
                    self._failures[t.url] = failure
        return {t.pod: self._failures[t.url] for rev in (revisions or list(self.targets))
                for t in self.targets.get(rev, ()) if t.url in self._failures}

    def _scrape_one(self, t: ScrapeTarget) -> str | None:
        try:
            text = self.fetch(t.url, self.timeout)
            snapshot: Snapshot = parse(text, self.clock())
        except ProviderError as exc:
            return str(exc)
        except ScrapeParseError as exc:
            return f"{t.url}: {exc}"
        self.state.record(t.url, snapshot)
        return None

    def windows(self, revision: str, window_seconds: float) -> list[PodWindow]:
        """The arm's pod windows ending now; ProviderError when none can be formed."""
        arm = list(self.targets.get(revision, ()))
        if not arm:
            return []
        failures = self.sample([revision])
        found = []
        for t in arm:
            if t.url in self._failures:
                continue
            w = window_of(self.state.history.get(t.url, []), window_seconds)
            if w is not None:
                found.append(w)
        if not found:
            if len(failures) == len(arm):
                raise ProviderError(f"no pod of revision {revision} answered: " + "; ".join(failures.values()))
            raise ProviderError(f"no earlier scrape of revision {revision}'s pods about {window_seconds:g}s ago "
                                "(sample() must run when the window starts)")
        return found

    def query(self, template_name: str, params: Mapping[str, str], window_seconds: float) -> float | None:
        pods = self.windows(params["revision"], window_seconds)
        if not pods:
            return None  # no pod selected: the empty vector Prometheus gives for a selector that matches none
        return evaluate(template_name, pods, params.get("bucket"))
