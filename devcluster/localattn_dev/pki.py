"""Certificates and credentials for one dev cluster, made once per state dir with the `openssl` CLI.

A private CA signs the apiserver's serving certificate (so clients verify TLS instead of skipping it);
components authenticate with static bearer tokens from a token file, which needs no client certificates.
"""

from __future__ import annotations

import secrets
import subprocess
from dataclasses import dataclass
from pathlib import Path

# name in kubeconfigs -> (user, groups). system:masters keeps the controller-manager working with its own
# identity for every controller (per-controller service-account credentials need the token controller,
# which we turn off because ServiceAccount admission is off).
IDENTITIES = {
    "admin": ("admin", "system:masters"),
    "controller-manager": ("system:kube-controller-manager", "system:masters"),
    "scheduler": ("system:kube-scheduler", "system:masters"),
    "node-agent": ("system:localattn-node-agent", "system:masters"),
}
# P-256 everywhere: key generation is instant, unlike RSA on a busy 2-core machine.
EC_KEY = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1")
SERVER_SANS = (
    "IP:127.0.0.1",
    "IP:10.0.0.1",
    "DNS:localhost",
    "DNS:kubernetes",
    "DNS:kubernetes.default",
    "DNS:kubernetes.default.svc",
    "DNS:kubernetes.default.svc.cluster.local",
)


@dataclass(frozen=True)
class Pki:
    """Paths of the generated files plus the bearer token of each identity."""

    dir: Path
    ca_crt: Path
    ca_key: Path
    server_crt: Path
    server_key: Path
    sa_key: Path
    sa_pub: Path
    token_file: Path
    tokens: dict[str, str]


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def ensure_pki(directory: Path) -> Pki:
    """Create (only what is missing) and return the cluster's PKI under `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    d = directory
    if not (d / "ca.crt").exists():
        _openssl(
            "req",
            "-x509",
            *EC_KEY,
            "-nodes",
            "-days",
            "3650",
            "-subj",
            "/CN=localattn-dev-ca",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            cwd=d,
        )
    if not (d / "apiserver.crt").exists():
        (d / "apiserver.ext").write_text(
            "subjectAltName=" + ",".join(SERVER_SANS) + "\n"
            "extendedKeyUsage=serverAuth\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
        )
        _openssl(
            "req",
            *EC_KEY,
            "-nodes",
            "-subj",
            "/CN=kube-apiserver",
            "-keyout",
            "apiserver.key",
            "-out",
            "apiserver.csr",
            cwd=d,
        )
        _openssl(
            "x509",
            "-req",
            "-in",
            "apiserver.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "3650",
            "-extfile",
            "apiserver.ext",
            "-out",
            "apiserver.crt",
            cwd=d,
        )
    if not (d / "sa.key").exists():
        _openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "sa.key", cwd=d)
        _openssl("ec", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=d)
    token_file = d / "tokens.csv"
    tokens = _read_tokens(token_file)
    if set(tokens) != set(IDENTITIES):
        tokens = {name: secrets.token_hex(24) for name in IDENTITIES}
        lines = [f'{tokens[n]},{user},{user},"{groups}"' for n, (user, groups) in IDENTITIES.items()]
        token_file.write_text("\n".join(lines) + "\n")
        token_file.chmod(0o600)
    for key in ("ca.key", "apiserver.key", "sa.key"):
        (d / key).chmod(0o600)
    return Pki(
        dir=d,
        ca_crt=d / "ca.crt",
        ca_key=d / "ca.key",
        server_crt=d / "apiserver.crt",
        server_key=d / "apiserver.key",
        sa_key=d / "sa.key",
        sa_pub=d / "sa.pub",
        token_file=token_file,
        tokens=tokens,
    )


def _read_tokens(token_file: Path) -> dict[str, str]:
    """Map identity name -> token from an existing token file (user column identifies the identity)."""
    if not token_file.exists():
        return {}
    by_user = {user: name for name, (user, _) in IDENTITIES.items()}
    tokens: dict[str, str] = {}
    for line in token_file.read_text().splitlines():
        parts = line.split(",", 3)
        if len(parts) >= 2 and parts[1] in by_user:
            tokens[by_user[parts[1]]] = parts[0]
    return tokens
