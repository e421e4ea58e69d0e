"""The node agent: registers fake GPU nodes and plays kubelet for the pods bound to them.

    python -m localattn_dev.nodeagent --kubeconfig K --nodes 2 --gpus-per-node 4 --mode simulate|process

Three loops, each with its own API client: a heartbeat (Node status + Lease every few seconds, re-creating a
node that vanished) so the node lifecycle controller never marks the nodes NotReady, a pod loop (list, then
watch until the watch ends or fails, then list again) so expired watches (410) and apiserver restarts only
cost a relist, and a status loop that patches a pod's status when the runtime reports a change (readiness
moves over time in process mode) and finishes deletions once the runtime stopped the pod. Every decision
comes from the pure modules (`nodes`, and behind the runtime `podplan`, `containerstate`, `probes`).
"""

from __future__ import annotations

import argparse
import json
import logging
import queue
import signal
import threading
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

from localattn_dev import nodes as pure
from localattn_dev.containerstate import rejected_status
from localattn_dev.podlayout import claim_ip, release_ip
from localattn_dev.podplan import gpu_count
from localattn_dev.podruntime import MODES, PodRuntime, make_runtime

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
        state_dir: Path | None = None,  # process mode: pod IPs are claimed machine-wide
    ) -> None:
        self.kubeconfig = kubeconfig
        self.names = names
        self.shape = shape
        self.runtime = runtime
        self.heartbeat_seconds = heartbeat_seconds
        self.watch_seconds = watch_seconds
        self.ips = (
            pure.IpPool(names)
            if state_dir is None
            else pure.IpPool(names, partial(claim_ip, state_dir), partial(release_ip, state_dir))
        )
        self.stop = threading.Event()
        self._registered_at = _now()
        self._lock = threading.Lock()
        self._patching = threading.Lock()
        self._sent: dict[str, dict[str, Any]] = {}  # last status patch per pod: patch only on change
        self._deleting: dict[str, str] = {}  # pod key -> uid, while the runtime stops it
        self._gpus: dict[str, tuple[str, int]] = {}  # pod key -> (node, GPUs) of admitted pods
        self._changed: queue.Queue[str] = queue.Queue()
        runtime.set_listener(self._changed.put)

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
                self.runtime.prune({p["metadata"].get("uid", "") for p in items})
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

        action = pure.decide(pod, set(self.names), watch_running=self.shape.mode != "simulate")
        key = pure.pod_key(pod)
        if action is pure.Action.IGNORE:
            if ip := pure.held_ip(pod, set(self.names)):
                self.ips.assign(pod["spec"]["nodeName"], key, ip)
            return
        meta = pod["metadata"]
        try:
            if action is pure.Action.DELETE:
                grace = meta.get("deletionGracePeriodSeconds")
                if grace is None:
                    grace = (pod.get("spec") or {}).get("terminationGracePeriodSeconds", 30)
                with self._lock:
                    self._deleting[key] = meta["uid"]
                if self.runtime.terminate(key, float(grace)):
                    self._finish_deletion(core, key)
                return
            node = pod["spec"]["nodeName"]
            ip = self.ips.assign(node, key, (pod.get("status") or {}).get("podIP"))
            with self._lock:  # the status loop forgets pods (and their GPUs) concurrently
                rejection = None
                if key not in self._gpus:
                    need = gpu_count(pod)
                    used = sum(n for k, (where, n) in self._gpus.items() if where == node)
                    rejection = pure.admit(meta["name"], need, used, self.shape.gpus)
                    if not rejection:
                        self._gpus[key] = (node, need)
            if rejection:
                self.ips.release(key)
                self._patch_status(core, key, rejected_status(f"OutOf{pure.GPU}", rejection))
                log.warning("rejected %s: %s", key, rejection)
                return
            self.runtime.sync(pod, ip, self.ips.host_ip(node))
            self._report(core, key)
        except ApiException as e:
            if e.status not in (404, 409):  # gone or changed meanwhile: the next event brings it back
                raise

    def _report(self, core: Any, key: str) -> None:
        patch = self.runtime.status(key)
        if patch is not None:
            self._patch_status(core, key, patch)

    def _patch_status(self, core: Any, key: str, patch: dict[str, Any]) -> None:
        # One patch at a time (the pod loop and the status loop both report): compare-and-send is atomic.
        with self._patching:
            if self._sent.get(key) == patch:
                return
            namespace, name = key.split("/", 1)
            core.patch_namespaced_pod_status(
                name, namespace, patch, _content_type=MERGE, _preload_content=False, _request_timeout=30
            )
            self._sent[key] = patch
        phase = patch["status"].get("phase")
        log.info("status %s: %s %s", key, phase, pure.ready_summary(patch["status"]))

    def _finish_deletion(self, core: Any, key: str) -> None:
        """The runtime stopped the pod: delete it for good (grace 0), as kubelet does."""
        with self._lock:
            uid = self._deleting.pop(key, None)
        if uid is None:
            return
        namespace, name = key.split("/", 1)
        body = {"gracePeriodSeconds": 0, "preconditions": {"uid": uid}}
        self._forget(key)
        core.delete_namespaced_pod(
            name, namespace, grace_period_seconds=0, body=body, _preload_content=False, _request_timeout=30
        )
        log.info("deleted %s", key)

    def status_loop(self) -> None:
        """Patch the status of pods whose runtime view changed; finish deletions the runtime completed."""
        from kubernetes.client.rest import ApiException

        core = self._core()
        while not self.stop.is_set():
            try:
                key = self._changed.get(timeout=1.0)
            except queue.Empty:
                continue
            try:
                if key in self._deleting:
                    # An infinite grace keeps the one the deletion asked for (the runtime keeps the shortest).
                    if self.runtime.terminate(key, float("inf")):
                        self._finish_deletion(core, key)
                elif key in self._gpus:
                    self._report(core, key)
            except ApiException as e:
                if e.status not in (404, 409):
                    log.warning("status of %s: %s", key, e)
            except Exception as e:  # an apiserver restart must not kill the loop
                log.warning("status of %s: %s", key, e)

    def _forget(self, key: str) -> None:
        self.runtime.forget(key)
        self.ips.release(key)
        with self._patching:
            self._sent.pop(key, None)
        with self._lock:
            self._gpus.pop(key, None)

    def _forget_missing(self, present: set[str]) -> None:
        for key in set(self.ips.assigned()) - present:
            self._forget(key)

    def run(self) -> None:
        # Import the client once, here: the loops' first imports in three threads at once race on the
        # kubernetes package's circular imports ("cannot import name 'ApiClient' from 'kubernetes.client'").
        import kubernetes.client  # noqa: F401

        threads = [
            threading.Thread(target=self.heartbeat_loop, name="heartbeat", daemon=True),
            threading.Thread(target=self.pod_loop, name="pods", daemon=True),
            threading.Thread(target=self.status_loop, name="status", daemon=True),
        ]
        for t in threads:
            t.start()
        self.stop.wait()
        self.runtime.close()


def _reader(kubeconfig: str) -> Any:
    from kubernetes import client, config

    from localattn_dev.processruntime import ApiReader

    return ApiReader(client.CoreV1Api(config.new_client_from_config(config_file=kubeconfig)))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m localattn_dev.nodeagent", description=__doc__.splitlines()[0])
    p.add_argument("--kubeconfig", required=True)
    p.add_argument("--nodes", type=int, default=2)
    p.add_argument("--gpus-per-node", type=int, default=4)
    p.add_argument("--cpu", default="32")
    p.add_argument("--memory", default="256Gi")
    p.add_argument("--pods", type=int, default=110)
    p.add_argument("--mode", choices=MODES, default="simulate")
    p.add_argument("--state-dir", type=Path, default=None, help="cluster state dir (process mode: pod files)")
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
    state_dir = args.state_dir or Path(args.kubeconfig).resolve().parent.parent
    runtime = make_runtime(args.mode, state_dir, _reader(args.kubeconfig) if args.mode == "process" else None)
    agent = Agent(
        args.kubeconfig, names, shape, runtime, args.heartbeat_seconds,
        state_dir=state_dir if args.mode == "process" else None,
    )  # fmt: skip
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: agent.stop.set())
    log.info("serving nodes %s (mode %s, %d GPUs each)", ", ".join(names), args.mode, args.gpus_per_node)
    agent.run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
