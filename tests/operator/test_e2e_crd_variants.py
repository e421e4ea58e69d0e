"""The two CRD variants on the real 1.20 apiserver: `localattn crd apply` detects the version and installs the
plain CRD; the CEL variant is refused there (which is why it is a separate file). A current apiserver (>= 1.25),
where `crd apply` picks the CEL variant, is not available here: that branch is covered by the pure
`wants_cel` test and by evaluating every rule with cel-python (test_cel_rules.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest

from localattn_operator import models

pytestmark = pytest.mark.e2e
CRD_NAME = f"{models.PLURAL}.{models.GROUP}"


def crd_apply(k8s: Any, *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "localattn_cli.main", "crd", "apply", "--kubeconfig",
                           str(k8s.kubeconfig), *flags], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "KUBERNETES_SERVICE_HOST": ""})


def test_crd_apply_detects_1_20_and_installs_the_plain_crd(k8s: Any) -> None:
    version = json.loads(k8s.kubectl("version", "-o", "json").stdout)["serverVersion"]
    assert (version["major"], version["minor"].rstrip("+")) == ("1", "20")
    result = crd_apply(k8s)
    assert result.returncode == 0, result.stderr
    assert "without CEL rules" in result.stdout and "v1.20" in result.stdout
    k8s.kubectl("wait", "--for", "condition=established", "--timeout=60s", f"crd/{CRD_NAME}")
    stored = json.loads(k8s.kubectl("get", "crd", CRD_NAME, "-o", "json").stdout)
    assert models.CEL_KEY not in json.dumps(stored["spec"])


def test_the_cel_variant_is_refused_by_1_20_and_nothing_changes(k8s: Any) -> None:
    before = json.loads(k8s.kubectl("get", "crd", CRD_NAME, "-o", "json").stdout)
    result = crd_apply(k8s, "--cel")
    assert result.returncode == 1
    assert models.CEL_KEY in result.stderr and "not declared in schema" in result.stderr, result.stderr
    after = json.loads(k8s.kubectl("get", "crd", CRD_NAME, "-o", "json").stdout)
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
