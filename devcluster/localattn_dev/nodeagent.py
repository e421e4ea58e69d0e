"""The node agent: registers fake GPU nodes and plays kubelet for the pods bound to them.

    python -m localattn_dev.nodeagent --kubeconfig K --nodes 2 --gpus-per-node 4 --mode simulate

Two loops, each with its own API client: a heartbeat (Node status + Lease every few seconds, re-creating a
node that vanished) so the node lifecycle controller never marks the nodes NotReady, and a pod loop
(list, then watch until the watch ends or fails, then list again) so expired watches (410) and apiserver
restarts only cost a relist. Every decision comes from the pure `nodes` module.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import threading
from datetime import UTC, datetime
from typing import Any

from localattn_dev import nodes as pure
from localattn_dev.podruntime import RUNTIMES, PodRuntime

log = logging.getLogger("localattn.nodeagent")
SMP = "application/strategic-merge-patch+json"
MERGE = "application/merge-patch+json"


def _now() -> datetime:
    return datetime.now(UTC)


class Agent:
    def __init__(
        self,
        kubeconfig: str,
        names: list[str],
        shape: pure.NodeShape,
        runtime: PodRuntime,
        heartbeat_seconds: float = 10.0,
        watch_seconds: int = 60,
    ) -> None:
        self.kubeconfig = kubeconfig
        self.names = names
        self.shape = shape
        self.runtime = runtime
        self.heartbeat_seconds = heartbeat_seconds
        self.watch_seconds = watch_seconds
        self.ips = pure.IpPool(names)
        self.stop = threading.Event()
        self._registered_at = _now()

    def _core(self) -> Any:
        from kubernetes import client, config

        return client.CoreV1Api(config.new_client_from_config(config_file=self.kubeconfig))

    # -- nodes -------------------------------------------------------------------------------------------
    def heartbeat_loop(self) -> None:
        from kubernetes import client

        core = self._core()
        leases = client.CoordinationV1Api(core.api_client)
        while not self.stop.is_set():
            for index, name in enumerate(self.names):
                try:
                    self._heartbeat(core, leases, index, name)
                except Exception as e:  # an apiserver restart must not kill the agent
                    log.warning("heartbeat %s: %s", name, e)
            self.stop.wait(self.heartbeat_seconds)

    def _heartbeat(self, core: Any, leases: Any, index: int, name: str) -> None:
        from kubernetes.client.rest import ApiException

        now = _now()
        body = {"status": pure.node_status(name, index, self.shape, now, self._registered_at)}
        try:
            raw = core.patch_node_status(name, body, _content_type=SMP, _preload_content=False)
        except ApiException as e:
            if e.status != 404:
                raise
            manifest = pure.node_manifest(name, index, self.shape, now)
            raw = core.create_node(manifest, _preload_content=False)
            log.info("registered node %s", name)
        uid = json.loads(raw.data)["metadata"]["uid"]
        lease = pure.lease_manifest(name, uid, now)
        try:
            leases.patch_namespaced_lease(
                name,
                pure.LEASE_NAMESPACE,
                {"spec": lease["spec"]},
                _content_type=MERGE,
                _preload_content=False,
            )
        except ApiException as e:
            if e.status != 404:
                raise
            leases.create_namespaced_lease(pure.LEASE_NAMESPACE, lease, _preload_content=False)

    # -- pods --------------------------------------------------------------------------------------------
    def pod_loop(self) -> None:
        from kubernetes import watch

        core = self._core()
        selector = "spec.nodeName!="
        while not self.stop.is_set():
            try:
                raw = core.list_pod_for_all_namespaces(
                    field_selector=selector, _preload_content=False, _request_timeout=30
                )
                listing = json.loads(raw.data)
                # Pods that already hold an IP claim it before new pods are handed one.
                items = sorted(listing["items"], key=lambda p: not (p.get("status") or {}).get("podIP"))
                for pod in items:
                    self.handle(core, pod)
                self._forget_missing({pure.pod_key(p) for p in items})
                stream = watch.Watch().stream(
                    core.list_pod_for_all_namespaces,
                    field_selector=selector,
                    resource_version=listing["metadata"]["resourceVersion"],
                    allow_watch_bookmarks=True,
                    timeout_seconds=self.watch_seconds,
                    deserialize=False,
                    _request_timeout=self.watch_seconds + 30,
                )
                for event in stream:
                    if self.stop.is_set():
                        break
                    kind, pod = event.get("type"), event.get("object") or {}
                    if kind in ("ADDED", "MODIFIED"):
                        self.handle(core, pod)
                    elif kind == "DELETED":
                        self._forget(pure.pod_key(pod))
                    elif kind == "ERROR":  # e.g. 410 Gone: relist
                        break
            except Exception as e:
                log.warning("pod watch: %s; relisting", e)
                self.stop.wait(1.0)

    def handle(self, core: Any, pod: dict[str, Any]) -> None:
        from kubernetes.client.rest import ApiException

        action = pure.decide(pod, set(self.names))
        key = pure.pod_key(pod)
        if action is pure.Action.IGNORE:
            if ip := pure.held_ip(pod, set(self.names)):
                self.ips.assign(pod["spec"]["nodeName"], key, ip)
            return
        meta = pod["metadata"]
        try:
            if action is pure.Action.DELETE:
                self._forget(key)
                body = {"gracePeriodSeconds": 0, "preconditions": {"uid": meta["uid"]}}
                core.delete_namespaced_pod(
                    meta["name"], meta["namespace"], grace_period_seconds=0, body=body, _preload_content=False
                )
                log.info("deleted %s", key)
            else:
                node = pod["spec"]["nodeName"]
                ip = self.ips.assign(node, key, (pod.get("status") or {}).get("podIP"))
                if self.runtime.start(pod, ip):
                    patch = pure.running_status(pod, ip, self.ips.host_ip(node), _now())
                    core.patch_namespaced_pod_status(
                        meta["name"], meta["namespace"], patch, _content_type=SMP, _preload_content=False
                    )
                    log.info("running %s on %s at %s", key, node, ip)
        except ApiException as e:
            if e.status not in (404, 409):  # gone or changed meanwhile: the next event brings it back
                raise

    def _forget(self, key: str) -> None:
        self.runtime.stop(key)
        self.ips.release(key)

    def _forget_missing(self, present: set[str]) -> None:
        for key in set(self.ips.assigned()) - present:
            self._forget(key)

    def run(self) -> None:
        threads = [
            threading.Thread(target=self.heartbeat_loop, name="heartbeat", daemon=True),
            threading.Thread(target=self.pod_loop, name="pods", daemon=True),
        ]
        for t in threads:
            t.start()
        self.stop.wait()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m localattn_dev.nodeagent", description=__doc__.splitlines()[0])
    p.add_argument("--kubeconfig", required=True)
    p.add_argument("--nodes", type=int, default=2)
    p.add_argument("--gpus-per-node", type=int, default=4)
    p.add_argument("--cpu", default="32")
    p.add_argument("--memory", default="256Gi")
    p.add_argument("--pods", type=int, default=110)
    p.add_argument("--mode", choices=sorted(RUNTIMES), default="simulate")
    p.add_argument("--name-prefix", default="localattn-gpu-")
    p.add_argument("--heartbeat-seconds", type=float, default=10.0)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(threadName)s %(message)s")
    names = [f"{args.name_prefix}{i}" for i in range(args.nodes)]
    shape = pure.NodeShape(
        gpus=args.gpus_per_node, cpu=args.cpu, memory=args.memory, pods=args.pods, mode=args.mode
    )
    agent = Agent(args.kubeconfig, names, shape, RUNTIMES[args.mode](), args.heartbeat_seconds)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: agent.stop.set())
    log.info("serving nodes %s (mode %s, %d GPUs each)", ", ".join(names), args.mode, args.gpus_per_node)
    agent.run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
