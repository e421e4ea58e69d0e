"""Flags, ports and credentials of the control plane, checked without starting it."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

from localattn_dev import components as c
from localattn_dev.assets import Assets
from localattn_dev.pki import ensure_pki
from localattn_dev.ports import pick_ports

ASSETS = Assets(Path("/b/etcd"), Path("/b/kube-apiserver"), Path("/b/kcm"), Path("/b/sched"), None)
PORTS = c.Ports(etcd_client=1, etcd_peer=2, apiserver=3, controller_manager=4, scheduler=5)


def flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_everything_binds_loopback_and_no_insecure_ports(tmp_path: Path) -> None:
    layout = c.Layout(tmp_path)
    api = c.apiserver_argv(ASSETS, layout, PORTS)
    assert (flag(api, "--bind-address"), flag(api, "--secure-port"), flag(api, "--insecure-port")) == (
        "127.0.0.1",
        "3",
        "0",
    )
    assert flag(api, "--etcd-servers") == "http://127.0.0.1:1"
    assert flag(api, "--disable-admission-plugins") == "ServiceAccount"
    assert flag(api, "--authorization-mode") == "RBAC"
    for argv, port in (
        (c.controller_manager_argv(ASSETS, layout, PORTS), "4"),
        (c.scheduler_argv(ASSETS, layout, PORTS), "5"),
    ):
        assert (flag(argv, "--bind-address"), flag(argv, "--secure-port"), flag(argv, "--port")) == (
            "127.0.0.1",
            port,
            "0",
        )
        assert "--leader-elect=false" in argv
    assert (
        flag(c.controller_manager_argv(ASSETS, layout, PORTS), "--controllers") == "*,-serviceaccount-token"
    )
    etcd = c.etcd_argv(ASSETS, layout, PORTS)
    assert flag(etcd, "--listen-client-urls") == "http://127.0.0.1:1"
    assert flag(etcd, "--listen-peer-urls") == "http://127.0.0.1:2"


def test_ports_are_distinct_free_and_reused(tmp_path: Path) -> None:
    ports = pick_ports({}, keep=set())
    values = list(ports.as_dict().values())
    assert len(set(values)) == len(c.Ports.__dataclass_fields__)  # the control plane's and Prometheus'
    assert pick_ports(ports.as_dict(), keep=set()) == ports  # still free: reused
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", ports.apiserver))
        busy.listen()
        moved = pick_ports(ports.as_dict(), keep=set())
        assert moved.apiserver != ports.apiserver and moved.etcd_client == ports.etcd_client
        # a running component keeps its port even though it is (by itself) in use
        assert pick_ports(ports.as_dict(), keep={"apiserver"}).apiserver == ports.apiserver


def test_pki_is_made_once_and_verifies(tmp_path: Path) -> None:
    pki = ensure_pki(tmp_path / "pki")
    again = ensure_pki(tmp_path / "pki")
    assert again.tokens == pki.tokens and set(pki.tokens) == {
        "admin",
        "controller-manager",
        "scheduler",
        "node-agent",
    }
    verify = subprocess.run(
        ["openssl", "verify", "-CAfile", str(pki.ca_crt), str(pki.server_crt)], capture_output=True, text=True
    )
    assert verify.returncode == 0, verify.stderr
    text = subprocess.run(
        ["openssl", "x509", "-in", str(pki.server_crt), "-noout", "-text"], capture_output=True, text=True
    ).stdout
    assert "IP Address:127.0.0.1" in text and "DNS:kubernetes.default.svc" in text
    assert (pki.token_file.stat().st_mode & 0o777) == 0o600
    assert 'admin,admin,"system:masters"' in pki.token_file.read_text()
