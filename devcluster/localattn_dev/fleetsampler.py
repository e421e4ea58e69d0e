"""A LAD's fleet sampled in a thread: ready serving pods, pods holding a GPU, and the GPUs the arms ask for.

What the capacity promises of a rollout or a scale are asserted on (ready pods never below `replicas`, GPUs never
above the budget), at every sampled moment rather than at a few polls. It uses the kubernetes client on one
connection: a kubectl process per sample would cost the shared CPUs more than the pods it watches.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

GPU = "nvidia.com/gpu"


def _ready(pod: Any) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in (pod.status.conditions or []))


def _gpus_of(container: Any) -> int:
    res = container.resources
    asked = ((res.limits or {}).get(GPU) or (res.requests or {}).get(GPU)) if res else None
    return int(asked or 0)


def _gpus(pod: Any) -> int:
    return sum(_gpus_of(c) for c in pod.spec.containers)


@dataclass(frozen=True)
class FleetSample:
    t: float
    ready: int  # ready, not terminating: what the Service routes to
    gpu_pods: int  # pods asking for a GPU, not terminating
    gpu_pods_all: int  # ... terminating ones included (their GPU is not free until they are gone)
    planned_gpus: int  # the arms' Deployments: spec.replicas x GPUs per pod (the operator's plan)


class FleetSampler:
    """Samples the LAD `name`'s pods and arms every 0.3 s, as a context manager."""

    def __init__(self, kubeconfig: Path | str, namespace: str, name: str):
        from kubernetes import client, config

        self._api = config.new_client_from_config(config_file=str(kubeconfig))
        self._core, self._apps = client.CoreV1Api(self._api), client.AppsV1Api(self._api)
        self.namespace, self.selector = namespace, f"localattn.dev/deployment={name}"
        self.samples: list[FleetSample] = []
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._t0 = time.monotonic()

    def sample(self) -> FleetSample:
        pods: list[Any] = self._core.list_namespaced_pod(self.namespace, label_selector=self.selector,
                                              _request_timeout=10).items
        deployments: list[Any] = self._apps.list_namespaced_deployment(self.namespace, label_selector=self.selector,
                                                            _request_timeout=10).items
        alive = [p for p in pods if p.status.phase not in ("Succeeded", "Failed")]
        live = [p for p in alive if p.metadata.deletion_timestamp is None]
        planned = 0
        for d in deployments:
            per_pod = sum(_gpus_of(c) for c in d.spec.template.spec.containers)
            planned += (d.spec.replicas or 0) * per_pod
        return FleetSample(time.monotonic() - self._t0, sum(1 for p in live if _ready(p)),
                           sum(1 for p in live if _gpus(p)), sum(1 for p in alive if _gpus(p)), planned)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append(self.sample())
            except Exception:  # an apiserver hiccup is not a capacity drop; counted, not sampled
                self.errors += 1
            self._stop.wait(0.3)

    def __enter__(self) -> FleetSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=15)
        self._api.close()

    def summary(self) -> str:
        s = self.samples
        return (f"{len(s)} samples ({self.errors} failed): ready min {min(x.ready for x in s)}, GPU pods max "
                f"{max(x.gpu_pods for x in s)} (with terminating {max(x.gpu_pods_all for x in s)}), planned GPUs "
                f"max {max(x.planned_gpus for x in s)}")
