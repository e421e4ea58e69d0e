"""`process` mode: the pods bound to the fake nodes run as local processes (one `PodWorker` each).

The runtime keeps the workers, reads what pods refer to (ConfigMaps, Secrets, PVC -> PV hostPath) from the
API, spreads pods over the machine's cores, and tells the agent when a pod's observed status changed.
Processes are recorded under `<state>/pods/run/` (procs.py: PID + start ticks), so a restarted agent adopts
them and `dev down` (`stop_all`) leaves none behind.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from localattn_dev import procs
from localattn_dev.paths import cache_dir
from localattn_dev.podenv import Refs, config_map_data, referenced_names, secret_data
from localattn_dev.podlayout import pods_dir, prune_aliases, release_all_ips
from localattn_dev.podplan import NodeEnv
from localattn_dev.podworker import PodWorker

log = logging.getLogger("localattn.nodeagent.runtime")
API_TIMEOUT = 10


def vllm_cache_root() -> Path:
    """One compile cache for every pod of the machine, so only the first pod of a model compiles."""
    return cache_dir() / "vllm-cache"


def node_env() -> NodeEnv:
    return NodeEnv(
        venv_bin=Path(sys.executable).parent,
        host_cpus=len(os.sched_getaffinity(0)),
        extra={
            "VLLM_CACHE_ROOT": str(vllm_cache_root()),
            # torch inductor's cache (FX graphs, C++ kernels) defaults to $TMPDIR, which is per pod: every pod of a
            # local-attention revision then spent minutes compiling the same kernels on its first requests.
            "TORCHINDUCTOR_CACHE_DIR": str(vllm_cache_root() / "torchinductor"),
            # The kernels' native library is built on first use into $LOCALATTN_CACHE (default ~/.cache: per pod
            # here); shared, a new local-attention pod loads it instead of running the compiler on its first request.
            "LOCALATTN_CACHE": str(cache_dir()),
            "HF_HUB_OFFLINE": "1",  # no network here: never try the Hub
            "TRANSFORMERS_OFFLINE": "1",
            "VLLM_NO_USAGE_STATS": "1",
            "DO_NOT_TRACK": "1",
        },
    )


class ApiReader:
    """The objects a pod refers to, read with the agent's client (every call with a timeout)."""

    def __init__(self, core: Any) -> None:
        self.core = core

    def _get(self, call: Callable[..., Any], *args: str) -> dict[str, Any] | None:
        from kubernetes.client.rest import ApiException

        try:
            raw = call(*args, _preload_content=False, _request_timeout=API_TIMEOUT)
        except ApiException as e:
            if e.status == 404:
                return None
            raise
        return dict(json.loads(raw.data))

    def refs(self, pod: Mapping[str, Any]) -> tuple[Refs, dict[str, str | None]]:
        namespace = pod["metadata"].get("namespace", "default")
        config_names, secret_names = referenced_names(pod)
        config_maps = {}
        for name in config_names:
            if (obj := self._get(self.core.read_namespaced_config_map, name, namespace)) is not None:
                config_maps[name] = config_map_data(obj)
        secrets = {}
        for name in secret_names:
            if (obj := self._get(self.core.read_namespaced_secret, name, namespace)) is not None:
                secrets[name] = secret_data(obj)
        claims: dict[str, str | None] = {}
        for volume in (pod.get("spec") or {}).get("volumes") or []:
            if "persistentVolumeClaim" not in volume:
                continue
            claim_name = volume["persistentVolumeClaim"]["claimName"]
            claim = self._get(self.core.read_namespaced_persistent_volume_claim, claim_name, namespace)
            if claim is None:
                continue
            volume_name = (claim.get("spec") or {}).get("volumeName")
            bound = (claim.get("status") or {}).get("phase") == "Bound"
            pv = self._get(self.core.read_persistent_volume, volume_name) if volume_name and bound else None
            claims[claim_name] = ((pv or {}).get("spec") or {}).get("hostPath", {}).get("path")
        return Refs(config_maps, secrets), claims


class ProcessRuntime:
    """Implements `podruntime.PodRuntime` by running processes."""

    def __init__(self, state_dir: Path, reader: ApiReader | None = None) -> None:
        self.state_dir = state_dir
        self.node_env = node_env()
        self.reader = reader
        self.workers: dict[str, PodWorker] = {}
        self._listener: Callable[[str], None] = lambda key: None
        self._closing = threading.Event()
        self._lock = threading.Lock()
        self.planning = threading.Lock()

    # PodContext for the workers
    def refs(self, pod: Mapping[str, Any]) -> tuple[Refs, dict[str, str | None]]:
        if self.reader is None:
            return Refs(), {}
        return self.reader.refs(pod)

    def core_load(self, excluding: str) -> dict[int, int]:
        load: dict[int, int] = {}
        with self._lock:
            workers = [w for key, w in self.workers.items() if key != excluding]
        for worker in workers:
            for core in worker.cores:
                load[core] = load.get(core, 0) + 1
        return load

    def closing(self) -> bool:
        return self._closing.is_set()

    # PodRuntime
    def set_listener(self, callback: Callable[[str], None]) -> None:
        self._listener = callback

    def sync(self, pod: dict[str, Any], pod_ip: str, host_ip: str) -> None:
        from localattn_dev.nodes import pod_key

        key = pod_key(pod)
        with self._lock:
            worker = self.workers.get(key)
            if worker is not None and worker.uid != pod["metadata"].get("uid"):
                worker.terminate(0)  # a new pod under an old name: the old one's processes go first
                worker = None
            if worker is None:
                worker = self.workers[key] = PodWorker(self, pod, pod_ip, host_ip, self._listener)
                worker.start()

    def status(self, key: str) -> dict[str, Any] | None:
        worker = self.workers.get(key)
        return worker.status() if worker is not None else None

    def terminate(self, key: str, grace: float) -> bool:
        worker = self.workers.get(key)
        if worker is None:
            return True
        worker.terminate(grace)
        return worker.finished.is_set()

    def forget(self, key: str) -> None:
        """The pod is gone from the API (deleted with grace 0 by us or by someone): nothing may remain."""
        with self._lock:
            worker = self.workers.pop(key, None)
        if worker is not None and not worker.finished.is_set():
            worker.terminate(0)

    def prune(self, live_uids: set[str]) -> None:
        """After a relist: stop processes recorded for pods that no longer exist (deleted while no agent ran)."""
        known = {w.uid for w in self.workers.values()}
        for name, record in procs.load_all(pods_dir(self.state_dir)).items():
            uid = name.rsplit("_", 1)[0]
            if uid not in live_uids and uid not in known:
                log.info("stopping %s (pid %d): its pod is gone", name, record.pid)
                threading.Thread(target=stop_record, args=(self.state_dir, name), daemon=True).start()

    def close(self) -> None:
        """The agent exits: workers stop watching; the processes keep running for the next agent."""
        self._closing.set()
        for worker in list(self.workers.values()):
            worker.wake.set()


def stop_record(state_dir: Path, name: str, timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL, the whole session of one recorded container process; drop its record."""
    import signal
    import time

    directory = pods_dir(state_dir)
    record = procs.load(directory, name)
    if record is None:
        return
    if procs.alive(record) or procs.session_members(record):
        procs.kill_session(record, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while procs.session_members(record) and time.monotonic() < deadline:
            procs.returncode(record)
            time.sleep(0.1)
        procs.kill_session(record, signal.SIGKILL)
        while procs.session_members(record) and time.monotonic() < deadline + 5:
            time.sleep(0.05)
    procs.forget(directory, name)


def stop_all(state_dir: Path, timeout: float = 10.0) -> list[str]:
    """Stop every pod process recorded in the state dir, in parallel (`dev down`); return their names."""
    names = list(procs.load_all(pods_dir(state_dir)))
    threads = [threading.Thread(target=stop_record, args=(state_dir, n, timeout)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    prune_aliases(state_dir)
    release_all_ips(state_dir)
    return names
