"""Where the dev cluster keeps its files: one cache root shared with the rest of localattn."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """`$LOCALATTN_CACHE`, else `~/.cache/localattn` (heavy artefacts, keyed by content)."""
    return Path(os.environ.get("LOCALATTN_CACHE") or Path.home() / ".cache" / "localattn")


def default_state_dir() -> Path:
    """`$LOCALATTN_DEV_DIR`, else `<cache>/dev`: certs, kubeconfig, etcd data, PIDs and logs of one cluster."""
    env = os.environ.get("LOCALATTN_DEV_DIR")
    return Path(env) if env else cache_dir() / "dev"


def resolve_state_dir(state_dir: Path | str | None) -> Path:
    return (
        Path(state_dir).expanduser().absolute() if state_dir is not None else default_state_dir().absolute()
    )
