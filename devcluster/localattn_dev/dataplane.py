"""The dev cluster's data-plane controller: Services/EndpointSlices/HTTPRoutes/InferencePools -> HAProxy,
Pods -> Prometheus (and HAProxy, as InferencePool endpoints).

    python -m localattn_dev.dataplane --kubeconfig K --state-dir DIR

Five list+watch loops (Services, EndpointSlices, HTTPRoutes, InferencePools, Pods; each its own API client,
relisting on any error) fill caches; a change wakes the sync thread, which waits a few milliseconds for the
burst to end, then brings HAProxy to the desired state (runtime API, or a seamless reload when frontends
change) and rewrites the Prometheus file-SD JSON. HAProxy and Prometheus are processes of their own (`dev up`
starts them). An HTTPRoute (the dev cluster's own Gateway API subset, `gatewayschema`) is served on an
address of its own with its backendRefs' weights (`routemodel`); a weight change is a runtime `set weight`,
applied within milliseconds of the watch event, with no reload. A backendRef may name an InferencePool
(Gateway API Inference Extension v1): its endpoints are the Ready pods its selector matches, round robin
within the ref's share, a stand-in for the Endpoint Picker that does not run here (`routemodel`). HTTPRoutes
and InferencePools are optional kinds: without their CRDs the loops find none (and retry quietly) and
Services are proxied as ever.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from pathlib import Path
from typing import Any

from localattn_dev import discovery
from localattn_dev.haproxycfg import ProxyFiles
from localattn_dev.prometheus import PrometheusFiles
from localattn_dev.serviceproxy import ServiceProxy, write_atomic
from localattn_dev.watchloop import ObjectCache, watch_forever

log = logging.getLogger("localattn.dataplane")
DEBOUNCE_SECONDS = 0.02
RESYNC_SECONDS = 30.0  # a periodic sync repairs a HAProxy restarted behind our back
SERVICES = "/api/v1/services"
PODS = "/api/v1/pods"
# v1beta1: what Kubernetes 1.20 serves (v1 from 1.21 on; the fields read here are the same in both).
ENDPOINT_SLICES = "/apis/discovery.k8s.io/v1beta1/endpointslices"
HTTPROUTES = "/apis/gateway.networking.k8s.io/v1/httproutes"
INFERENCE_POOLS = "/apis/inference.networking.k8s.io/v1/inferencepools"


class DataPlane:
    def __init__(self, kubeconfig: str, state_dir: Path) -> None:
        self.kubeconfig = kubeconfig
        self.proxy = ServiceProxy(ProxyFiles(state_dir))
        self.prometheus = PrometheusFiles(state_dir)
        self.services, self.slices, self.pods = ObjectCache(), ObjectCache(), ObjectCache()
        # Not waited for: a cluster without the HTTPRoute (InferencePool) CRD still proxies Services (and routes).
        self.routes, self.pools = ObjectCache(), ObjectCache()
        self.proxy_dirty, self.pods_dirty = threading.Event(), threading.Event()
        self.wake = threading.Event()
        self.stop = threading.Event()

    def _api_client(self) -> Any:
        from kubernetes import config

        return config.new_client_from_config(config_file=self.kubeconfig)

    def _mark(self, flag: threading.Event) -> Any:
        def changed() -> None:
            flag.set()
            self.wake.set()

        return changed

    def _watch(self, path: str, cache: ObjectCache, flag: threading.Event) -> None:
        watch_forever(self._api_client(), path, cache, self._mark(flag), self.stop)

    def sync_loop(self) -> None:
        while not self.stop.is_set():
            self.wake.wait(RESYNC_SECONDS)
            self.stop.wait(DEBOUNCE_SECONDS)
            self.wake.clear()
            if self.pods_dirty.is_set() and self.pods.synced.is_set():
                self.pods_dirty.clear()
                self._sync_pods()
            # Pods are waited for too: a restarted controller must not drop the pool endpoints it has not listed yet.
            if self.services.synced.is_set() and self.slices.synced.is_set() and self.pods.synced.is_set():
                self.proxy_dirty.clear()
                self._sync_proxy()

    def _sync_proxy(self) -> None:
        try:
            plan = self.proxy.sync(self.services.snapshot().values(), self.slices.snapshot().values(),
                                   routes=self.routes.snapshot().values(), pools=self.pools.snapshot().values(),
                                   pods=self.pods.snapshot().values())
            if plan.reload or plan.commands:
                log.info("proxy: %s", "reloaded" if plan.reload else f"{len(plan.commands)} runtime commands")
        except Exception as e:
            log.warning("proxy sync failed (%s); retrying with a reload", e)
            self.proxy.running = None
            self.proxy_dirty.set()
            self.stop.wait(1.0)
            self.wake.set()

    def _sync_pods(self) -> None:
        text = discovery.render_file_sd(self.pods.snapshot().values())
        if write_atomic(self.prometheus.pods_file, text):
            log.info("prometheus targets: %d", text.count('"targets"'))

    def run(self) -> None:
        # Imported once here: threads importing the kubernetes package concurrently can see it half-initialised.
        import kubernetes.config  # noqa: F401

        loops = [
            ("services", SERVICES, self.services, self.proxy_dirty),
            ("endpointslices", ENDPOINT_SLICES, self.slices, self.proxy_dirty),
            ("httproutes", HTTPROUTES, self.routes, self.proxy_dirty),
            ("inferencepools", INFERENCE_POOLS, self.pools, self.proxy_dirty),
            ("pods", PODS, self.pods, self.pods_dirty),
        ]
        for name, path, cache, flag in loops:
            threading.Thread(target=self._watch, args=(path, cache, flag), name=name, daemon=True).start()
        threading.Thread(target=self.sync_loop, name="sync", daemon=True).start()
        self.stop.wait()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m localattn_dev.dataplane", description=__doc__.splitlines()[0])
    p.add_argument("--kubeconfig", required=True)
    p.add_argument("--state-dir", type=Path, required=True)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(threadName)s %(message)s")
    plane = DataPlane(args.kubeconfig, args.state_dir)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: plane.stop.set())
    plane.run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
