"""The dev cluster's model store: what the example PersistentVolume (hostPath /var/lib/localattn/models,
examples/model-pvc.yaml) holds in process mode, so `pvc://models/tiny-llama` serves the trained tiny model.

Entries are symlinks to the cached model directories (read-only by convention: pods only read them):

    <state>/hostpath/var/lib/localattn/models/tiny-llama   -> localattn_runtime.train.trained_model_dir()
    <state>/hostpath/var/lib/localattn/models/tiny-random  -> localattn_runtime.tinymodel.random_model_dir()
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from localattn_dev.podlayout import hostpath_root
from localattn_dev.podvolumes import host_path

MODELS_HOST_PATH = "/var/lib/localattn/models"
MODELS = ("tiny-random", "tiny-llama")


def _source(model: str) -> Callable[[], Path]:
    if model == "tiny-llama":
        from localattn_runtime.train import trained_model_dir

        return trained_model_dir
    if model == "tiny-random":
        from localattn_runtime.tinymodel import random_model_dir

        return random_model_dir
    raise ValueError(f"unknown model {model!r} (known: {', '.join(MODELS)})")


def store_dir(state_dir: Path) -> Path:
    return host_path(hostpath_root(state_dir), MODELS_HOST_PATH)


def prepare(state_dir: Path, models: Iterable[str] = MODELS) -> dict[str, Path]:
    """Link each model into the store (building it once, cached under ~/.cache/localattn); idempotent."""
    store = store_dir(state_dir)
    store.mkdir(parents=True, exist_ok=True)
    linked = {}
    for model in models:
        target = _source(model)()
        link = store / model
        if link.is_symlink() and link.resolve() != target.resolve():
            link.unlink()
        if not link.exists():
            link.symlink_to(target, target_is_directory=True)
        linked[model] = link
    return linked
