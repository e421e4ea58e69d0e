"""List, then watch, one kind of object across all namespaces, keeping a local cache of them (I/O).

The same loop as the node agent's pod loop: list (with a timeout), watch from the list's resourceVersion
until the watch ends or fails (410 Gone, an apiserver restart), then list again; so a lost event costs at
most one relist. Each change calls `on_change()` so a consumer can resync from the cache.

It speaks to a collection *path* (`/api/v1/services`, `/apis/discovery.k8s.io/v1beta1/endpointslices`)
through the client's authenticated transport rather than through generated API classes: the dev cluster
(Kubernetes 1.20) serves EndpointSlices only as v1beta1, which the current Python client no longer has.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

log = logging.getLogger("localattn.watch")
LIST_TIMEOUT = 30.0


class ObjectCache:
    """The last seen state of each object, keyed "<namespace>/<name>"; thread-safe snapshots."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._objects: dict[str, dict[str, Any]] = {}
        self.synced = threading.Event()  # set after the first complete list

    @staticmethod
    def key(obj: dict[str, Any]) -> str:
        meta = obj.get("metadata") or {}
        return f"{meta.get('namespace', '')}/{meta.get('name', '')}"

    def replace(self, items: list[dict[str, Any]]) -> None:
        with self._lock:
            self._objects = {self.key(o): o for o in items}
        self.synced.set()

    def put(self, obj: dict[str, Any]) -> None:
        with self._lock:
            self._objects[self.key(obj)] = obj

    def delete(self, obj: dict[str, Any]) -> None:
        with self._lock:
            self._objects.pop(self.key(obj), None)

    def snapshot(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return dict(self._objects)


class ApiError(RuntimeError):
    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def _get(api_client: Any, path: str, query: list[tuple[str, str]], timeout: float | tuple[float, float]) -> Any:
    params = api_client.param_serialize(
        "GET", path, query_params=query, header_params={"Accept": "application/json"}, auth_settings=["BearerToken"]
    )
    response = api_client.call_api(*params, _request_timeout=timeout)
    if response.status >= 400:
        raise ApiError(f"GET {path}: {response.status} {response.read()[:300]!r}", response.status)
    return response


def _lines(response: Any) -> Iterator[str]:
    buffer = b""
    for chunk in response.response.stream(amt=None, decode_content=False):
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            if line.strip():
                yield line.decode(errors="replace")


def watch_forever(
    api_client: Any,
    path: str,
    cache: ObjectCache,
    on_change: Callable[[], None],
    stop: threading.Event,
    watch_seconds: int = 60,
) -> None:
    """Keep `cache` equal to the cluster's objects under collection `path`.

    A 404 means the kind is not served (an optional CRD not installed, or deleted): there are none of them,
    so the cache is emptied (and counts as synced); the loop keeps retrying every second, logging a repeated
    error only once, and picks the kind up within a second of its CRD being installed."""
    last_error = ""
    while not stop.is_set():
        try:
            listing = json.loads(_get(api_client, path, [], LIST_TIMEOUT).read())
            cache.replace(listing.get("items") or [])
            last_error = ""
            on_change()
            query = [
                ("watch", "true"),
                ("resourceVersion", listing["metadata"]["resourceVersion"]),
                ("allowWatchBookmarks", "true"),
                ("timeoutSeconds", str(watch_seconds)),
            ]
            # (connect, read) timeouts: a silent half-open connection ends the watch instead of hanging it.
            response = _get(api_client, path, query, (10.0, watch_seconds + 30.0))
            try:
                for line in _lines(response):
                    if stop.is_set():
                        break
                    event = json.loads(line)
                    kind, obj = event.get("type"), event.get("object") or {}
                    if kind in ("ADDED", "MODIFIED"):
                        cache.put(obj)
                    elif kind == "DELETED":
                        cache.delete(obj)
                    elif kind == "ERROR":  # e.g. 410 Gone: relist
                        break
                    else:  # BOOKMARK
                        continue
                    on_change()
            finally:
                response.response.release_conn()
        except Exception as e:  # an apiserver restart must not end the loop
            if isinstance(e, ApiError) and e.status == 404 and (cache.snapshot() or not cache.synced.is_set()):
                cache.replace([])
                on_change()
            if str(e) != last_error:
                log.warning("watch %s: %s; relisting", path, e)
                last_error = str(e)
            stop.wait(1.0)
