"""Binary lookup: $KUBEBUILDER_ASSETS first, our cached build for whatever it lacks."""

from __future__ import annotations

from pathlib import Path

import pytest

from localattn_dev.assets import AssetsError, find_assets


def fake_bins(directory: Path, *names: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name in names:
        (directory / name).write_text("#!/bin/sh\n")
        (directory / name).chmod(0o755)
    return directory


ALL = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl")


def test_envtest_dir_is_used_and_gaps_come_from_our_build(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    envtest = fake_bins(tmp_path / "envtest", "etcd", "kube-apiserver", "kubectl")
    ours = fake_bins(tmp_path / "cache" / "k8s" / "abc" / "bin", *ALL)
    (ours.parent / ".complete").touch()
    monkeypatch.setenv("KUBEBUILDER_ASSETS", str(envtest))
    monkeypatch.setenv("LOCALATTN_CACHE", str(tmp_path / "cache"))
    assets = find_assets(allow_build=False)
    assert (assets.etcd, assets.kube_apiserver, assets.kubectl) == (
        envtest / "etcd", envtest / "kube-apiserver", envtest / "kubectl",
    )  # fmt: skip
    assert (assets.kube_controller_manager, assets.kube_scheduler) == (
        ours / "kube-controller-manager", ours / "kube-scheduler",
    )  # fmt: skip


def test_complete_envtest_dir_needs_no_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    envtest = fake_bins(tmp_path / "envtest", *ALL)
    monkeypatch.setenv("KUBEBUILDER_ASSETS", str(envtest))
    monkeypatch.setenv("LOCALATTN_CACHE", str(tmp_path / "empty-cache"))
    assert find_assets(allow_build=False).kube_scheduler == envtest / "kube-scheduler"


def test_unfinished_build_is_not_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_bins(tmp_path / "cache" / "k8s" / "abc" / "bin", *ALL)  # no .complete marker: interrupted build
    monkeypatch.delenv("KUBEBUILDER_ASSETS", raising=False)
    monkeypatch.setenv("LOCALATTN_CACHE", str(tmp_path / "cache"))
    with pytest.raises(AssetsError):
        find_assets(allow_build=False)
