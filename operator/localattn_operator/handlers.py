"""kopf handlers: thin triggers into the one reconcile path (see reconciler.py).

Importing this module registers the handlers with kopf's default registry.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import kopf

from localattn_operator import models
from localattn_operator.k8s import Cluster, load_api_client, load_configuration
from localattn_operator.reconciler import Reconciler
from localattn_operator.render import LABEL_NAME, MANAGED_BY
from localattn_operator.settings import Settings

SETTINGS = Settings.from_env()
_LAD = (models.GROUP, models.VERSION, models.PLURAL)
_CHILDREN = {"app.kubernetes.io/managed-by": MANAGED_BY}
CHILD_RESOURCES = (("apps", "v1", "deployments"), ("", "v1", "services"), ("", "v1", "configmaps"), ("", "v1", "pods"))
CHILD_SELECTOR = ",".join(f"{k}={v}" for k, v in _CHILDREN.items())


def configure_settings(settings: kopf.OperatorSettings, ours: Settings) -> None:
    """kopf's settings as this operator needs them (a function of ours, so that tests can check them)."""
    # Progress and diff-base live in annotations under our own prefix: status stays ours, and nothing is
    # kept only in memory.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=models.GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=models.GROUP, key="last-handled-configuration"
    )
    settings.posting.level = 40  # kopf's own events only for errors; ours say what was decided
    # No call without a deadline: kopf's short requests, and its watch streams (the server closes them after
    # server_timeout; a stream silent for longer than client_timeout is a dead connection, reopened).
    settings.networking.request_timeout = ours.api_timeout_seconds
    settings.networking.connect_timeout = ours.api_connect_timeout_seconds
    settings.watching.server_timeout = ours.watch_server_timeout_seconds
    settings.watching.client_timeout = ours.watch_client_timeout_seconds
    settings.watching.connect_timeout = ours.api_connect_timeout_seconds
    # Server-side filtering of the child watches: the apiserver sends only the objects we render, not every
    # Pod, ConfigMap, Service and Deployment of the cluster (the handlers' `labels=` alone filter client-side).
    for group, version, plural in CHILD_RESOURCES:
        settings.watching.label_selectors[group, version, plural] = CHILD_SELECTOR
    settings.batching.worker_limit = 64


@kopf.on.login()
def login(**_: Any) -> kopf.ConnectionInfo:
    """The same credentials as our own client (k8s.load_configuration): an explicit kubeconfig wins over the
    in-cluster service account. kopf's built-in login tries in-cluster first, whatever the command line said."""
    config = load_configuration(SETTINGS.kubeconfig)
    header = config.get_api_key_with_prefix("BearerToken") or config.get_api_key_with_prefix("authorization")
    scheme, _space, bearer = (header or "").rpartition(" ")
    return kopf.ConnectionInfo(
        server=config.host,
        ca_path=config.ssl_ca_cert,
        insecure=not config.verify_ssl,
        username=config.username or None,
        password=config.password or None,
        scheme=scheme or ("Bearer" if bearer else None),
        token=bearer or None,
        certificate_path=config.cert_file,
        private_key_path=config.key_file,
    )


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    configure_settings(settings, SETTINGS)
    asyncio.get_running_loop().set_default_executor(
        ThreadPoolExecutor(max_workers=SETTINGS.reconcile_threads, thread_name_prefix="reconcile")
    )
    cluster = Cluster(
        load_api_client(SETTINGS.kubeconfig),
        connect_timeout=SETTINGS.api_connect_timeout_seconds, read_timeout=SETTINGS.api_timeout_seconds,
    )
    memo.reconciler = Reconciler(
        cluster, coalesce_seconds=SETTINGS.coalesce_seconds, pending_grace_seconds=SETTINGS.pending_grace_seconds,
        prometheus_url=SETTINGS.prometheus_url, measure_threads=SETTINGS.measure_threads,
    )


@kopf.on.resume(*_LAD)
@kopf.on.create(*_LAD)
@kopf.on.update(*_LAD)
async def lad_changed(name: str, namespace: str | None, memo: kopf.Memo, **_: Any) -> None:
    await memo.reconciler.reconcile(namespace or "default", name)


@kopf.timer(*_LAD, interval=SETTINGS.resync_seconds, initial_delay=SETTINGS.resync_seconds)
async def resync(name: str, namespace: str | None, memo: kopf.Memo, **_: Any) -> None:
    await memo.reconciler.reconcile(namespace or "default", name)


@kopf.on.event("apps", "v1", "deployments", labels=_CHILDREN)
@kopf.on.event("", "v1", "services", labels=_CHILDREN)
@kopf.on.event("", "v1", "configmaps", labels=_CHILDREN)
@kopf.on.event("", "v1", "pods", labels=_CHILDREN)
async def child_changed(labels: kopf.Labels, namespace: str | None, memo: kopf.Memo, **_: Any) -> None:
    owner = labels.get(LABEL_NAME)
    if owner and namespace and hasattr(memo, "reconciler"):
        memo.reconciler.schedule(namespace, owner)
