"""Locate the control-plane binaries: `$KUBEBUILDER_ASSETS`, else our cached build, else build them.

envtest-style asset dirs usually hold only etcd, kube-apiserver and kubectl; any binary missing there is
taken from our own build, so an envtest download still saves the (minutes-long) apiserver build only if
the controller-manager and scheduler are present too.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from localattn_dev.paths import cache_dir

REQUIRED = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")
OPTIONAL = ("kubectl",)


class AssetsError(RuntimeError):
    """The binaries could not be found or built."""


@dataclass(frozen=True)
class Assets:
    """Absolute paths of the binaries the dev cluster runs."""

    etcd: Path
    kube_apiserver: Path
    kube_controller_manager: Path
    kube_scheduler: Path
    kubectl: Path | None

    def path(self, name: str) -> Path | None:
        return getattr(self, name.replace("-", "_"))


def build_script() -> Path:
    """The build script lives next to the package in the source tree (`devcluster/build-control-plane.sh`)."""
    return Path(__file__).resolve().parent.parent / "build-control-plane.sh"


def _executable(directory: Path, name: str) -> Path | None:
    candidate = directory / name
    return candidate if candidate.is_file() and os.access(candidate, os.X_OK) else None


def _cached_bin_dirs() -> list[Path]:
    """Completed builds under `<cache>/k8s/<key>/`, newest first (used when the script is unavailable)."""
    root = cache_dir() / "k8s"
    done = [marker.parent / "bin" for marker in root.glob("*/.complete")]
    return sorted(done, key=lambda p: p.stat().st_mtime, reverse=True)


def build(quiet: bool = True) -> Path:
    """Run the (idempotent, content-keyed) build script and return the bin dir it prints last.

    Warm, it returns in well under a second; cold, it takes ~5 minutes and needs root for apt.
    """
    script = build_script()
    if not script.is_file():
        raise AssetsError(f"build script not found at {script}")
    proc = subprocess.run(
        ["bash", str(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE if quiet else None,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise AssetsError(f"{script} failed ({proc.returncode}):\n{proc.stderr or ''}")
    lines = proc.stdout.strip().splitlines()
    if not lines:
        raise AssetsError(f"{script} printed no bin dir")
    return Path(lines[-1])


def find_assets(allow_build: bool = True) -> Assets:
    """Resolve every binary; builds (or reuses the cached build) only for what `$KUBEBUILDER_ASSETS` lacks."""
    found: dict[str, Path | None] = dict.fromkeys(REQUIRED + OPTIONAL)
    env = os.environ.get("KUBEBUILDER_ASSETS")
    if env:
        for name in found:
            found[name] = _executable(Path(env), name)
    if any(found[name] is None for name in REQUIRED):
        bin_dir = _own_bin_dir(allow_build)
        for name in found:
            found[name] = found[name] or _executable(bin_dir, name)
    missing = [name for name in REQUIRED if found[name] is None]
    if missing:
        raise AssetsError(f"missing control-plane binaries: {', '.join(missing)}")
    kubectl = found["kubectl"] or (Path(p) if (p := shutil.which("kubectl")) else None)
    return Assets(
        etcd=_must(found["etcd"]),
        kube_apiserver=_must(found["kube-apiserver"]),
        kube_controller_manager=_must(found["kube-controller-manager"]),
        kube_scheduler=_must(found["kube-scheduler"]),
        kubectl=kubectl,
    )


def _own_bin_dir(allow_build: bool) -> Path:
    cached = _cached_bin_dirs()
    if build_script().is_file() and allow_build:
        try:
            return build()
        except AssetsError:
            # e.g. not root and a build package went missing: an older complete build still serves.
            if not cached:
                raise
            return cached[0]
    if cached:
        return cached[0]
    raise AssetsError("no cached control-plane build, and no build allowed or possible")


def _must(path: Path | None) -> Path:
    assert path is not None
    return path


def kubectl_path() -> Path:
    """kubectl matching the cluster (our 1.20 build) when available, else whatever is on PATH."""
    try:
        assets = find_assets(allow_build=False)
    except AssetsError:
        assets = None
    if assets is not None and assets.kubectl is not None:
        return assets.kubectl
    which = shutil.which("kubectl")
    if which is None:
        raise AssetsError("no kubectl found")
    return Path(which)
