"""kopf handlers: thin triggers into the one reconcile path (see reconciler.py).

Importing this module registers the handlers with kopf's default registry.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import kopf

from localattn_operator import models
from localattn_operator.k8s import Cluster, load_api_client
from localattn_operator.reconciler import Reconciler
from localattn_operator.render import LABEL_NAME, MANAGED_BY
from localattn_operator.settings import Settings

SETTINGS = Settings.from_env()
_LAD = (models.GROUP, models.VERSION, models.PLURAL)
_CHILDREN = {"app.kubernetes.io/managed-by": MANAGED_BY}


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    # Progress and diff-base live in annotations under our own prefix: status stays ours, and nothing is
    # kept only in memory.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=models.GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=models.GROUP, key="last-handled-configuration"
    )
    settings.posting.level = 40  # kopf's own events only for errors; ours say what was decided
    settings.watching.server_timeout = 300
    settings.batching.worker_limit = 64
    asyncio.get_running_loop().set_default_executor(
        ThreadPoolExecutor(max_workers=SETTINGS.reconcile_threads, thread_name_prefix="reconcile")
    )
    memo.reconciler = Reconciler(Cluster(load_api_client()), coalesce_seconds=SETTINGS.coalesce_seconds)


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
