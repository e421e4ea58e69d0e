"""Process mode's pure decisions: env and `$(VAR)` expansion, volumes, mountPath rewriting, the plan."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from localattn_dev.podenv import ConfigError, PodFacts, Refs, container_env, expand, secret_data
from localattn_dev.podplan import ImageError, NodeEnv, find_image, gpu_count, pick_cores, plan_pod
from localattn_dev.podvolumes import MountTable, VolumeError, mount_links, volume_plans

FACTS = PodFacts("web-0", "team", "uid-1", "localattn-gpu-1", "127.1.1.5", "127.1.1.1")
ROOT = Path("/state/pods/team_web-0_uid-1")
HOSTPATH = Path("/state/hostpath")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("--host $(POD_IP)", "--host 127.1.1.5"),
        ("$(POD_IP):$(PORT)", "127.1.1.5:8000"),
        ("$(MISSING) stays", "$(MISSING) stays"),
        ("$$(POD_IP) is escaped", "$(POD_IP) is escaped"),
        ("a $$ b", "a $ b"),
        ("cost $5", "cost $5"),
        ("unterminated $(POD_IP", "unterminated $(POD_IP"),
        ("trailing $", "trailing $"),
        ("$(EMPTY)x", "x"),
    ],
)
def test_expand_follows_kubelet(text: str, expected: str) -> None:
    values = {"POD_IP": "127.1.1.5", "PORT": "8000", "EMPTY": ""}
    assert expand(text, values.get) == expected


def test_env_values_refs_downward_api_and_order() -> None:
    container = {
        "name": "c",
        "resources": {"limits": {"memory": "1Gi", "cpu": "1500m"}},
        "envFrom": [{"configMapRef": {"name": "settings"}, "prefix": "CFG_"}],
        "env": [
            {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
            {"name": "ADDR", "value": "$(POD_IP):8000"},
            {"name": "EARLY", "value": "$(LATER)"},  # defined later: not expanded (kubelet's order)
            {"name": "LATER", "value": "x"},
            {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}},
            {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "mode"}}},
            {
                "name": "MEM",
                "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}},
            },
            {"name": "CPUS", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}},
            {"name": "OPT", "valueFrom": {"secretKeyRef": {"name": "absent", "key": "k", "optional": True}}},
        ],
    }
    secret = secret_data({"data": {"token": base64.b64encode(b"s3cr3t").decode()}})
    refs = Refs(config_maps={"settings": {"mode": b"fast"}}, secrets={"creds": secret})
    env = container_env(container, FACTS, refs, base={"PATH": "/bin"})
    assert env["PATH"] == "/bin"
    assert (env["POD_IP"], env["POD_NAME"], env["NS"], env["NODE"]) == (
        "127.1.1.5", "web-0", "team", "localattn-gpu-1",
    )  # fmt: skip
    assert env["ADDR"] == "127.1.1.5:8000"
    assert env["EARLY"] == "$(LATER)"
    assert (env["TOKEN"], env["MODE"], env["CFG_mode"]) == ("s3cr3t", "fast", "fast")
    assert (env["MEM"], env["CPUS"]) == ("1024", "2")
    assert "OPT" not in env


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"name": "T", "valueFrom": {"secretKeyRef": {"name": "nope", "key": "k"}}},
            'secret "nope" not found',
        ),
        (
            {"name": "T", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "nokey"}}},
            "couldn't find key nokey",
        ),
    ],
)
def test_missing_references_are_config_errors(env: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        container_env({"name": "c", "env": [env]}, FACTS, Refs(config_maps={"cm": {}}))


POD: dict[str, Any] = {
    "metadata": {"name": "web-0", "namespace": "team", "uid": "uid-1"},
    "spec": {
        "nodeName": "localattn-gpu-1",
        "volumes": [
            {
                "name": "config",
                "configMap": {"name": "runtime", "items": [{"key": "a.json", "path": "conf/a.json"}]},
            },
            {"name": "creds", "secret": {"secretName": "creds", "defaultMode": 0o600}},
            {"name": "tmp", "emptyDir": {}},
            {"name": "model", "persistentVolumeClaim": {"claimName": "models", "readOnly": True}},
        ],
        "containers": [
            {
                "name": "vllm",
                "image": "localattn/vllm-runtime:0.1.0",
                "command": ["vllm", "serve"],
                "args": [
                    "/models/tiny",
                    "--host",
                    "$(POD_IP)",
                    "--config=/etc/localattn/conf/a.json",
                    "/tmpfoo",
                ],
                "workingDir": "/tmp/work",
                "env": [
                    {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                    {"name": "HOME", "value": "/tmp"},
                    {"name": "HF_HOME", "value": "/tmp/hf"},
                    {"name": "EXPANDED", "value": "$(HOME)/x"},
                ],
                "resources": {"requests": {"cpu": "2", "nvidia.com/gpu": "1"}, "limits": {"memory": "4Gi"}},
                "ports": [{"name": "http", "containerPort": 8000}],
                "volumeMounts": [
                    {"name": "config", "mountPath": "/etc/localattn", "readOnly": True},
                    {"name": "creds", "mountPath": "/var/run/secrets/s3"},
                    {"name": "tmp", "mountPath": "/tmp"},
                    {"name": "model", "mountPath": "/models", "readOnly": True},
                ],
            }
        ],
    },
}
REFS = Refs(
    config_maps={"runtime": {"a.json": b"{}", "b.json": b"[]"}}, secrets={"creds": {"key": b"\x00\x01"}}
)
CLAIMS = {"models": "/var/lib/localattn/models"}


def test_volume_plans_place_each_volume() -> None:
    plans = volume_plans(POD, REFS, CLAIMS, ROOT, HOSTPATH)
    assert plans["tmp"].directory == ROOT / "volumes" / "tmp"
    assert plans["model"].directory == HOSTPATH / "var/lib/localattn/models"
    (config,) = plans["config"].files  # only the listed item
    assert (config.path, config.content, config.mode) == ("conf/a.json", b"{}", 0o444)
    (secret,) = plans["creds"].files
    assert (secret.path, secret.content, secret.mode) == (
        "key",
        b"\x00\x01",
        0o400,
    )  # read-only: no write bit


@pytest.mark.parametrize(
    ("claims", "message"),
    [({}, 'persistentvolumeclaim "models" not found'), ({"models": None}, "not bound to a hostPath")],
)
def test_unusable_claims_are_volume_errors(claims: dict[str, str | None], message: str) -> None:
    with pytest.raises(VolumeError, match=message):
        volume_plans(POD, REFS, claims, ROOT, HOSTPATH)


def test_mount_table_rewrites_paths_under_mount_paths_only() -> None:
    plans = volume_plans(POD, REFS, CLAIMS, ROOT, HOSTPATH)
    table = MountTable(mount_links(POD["spec"]["containers"][0], plans, ROOT))
    fs = ROOT / "fs"
    assert table.rewrite("/tmp") == f"{fs}/tmp"
    assert table.rewrite("/tmp/hf/x") == f"{fs}/tmp/hf/x"
    assert table.rewrite("--config=/etc/localattn/a.json") == f"--config={fs}/etc/localattn/a.json"
    # A hostPath/PV mount (the model store) is named by its shared directory: the same path in every pod.
    assert table.rewrite("a:/models/m,/tmp") == f"a:{HOSTPATH}/var/lib/localattn/models/m,{fs}/tmp"
    for untouched in ("/tmpfoo", "/etc/localattnx", "x/tmp", "relative/models", "/usr/bin"):
        assert table.rewrite(untouched) == untouched


def test_overlapping_mount_paths_are_refused() -> None:
    container = {
        "name": "c",
        "volumeMounts": [{"name": "a", "mountPath": "/data"}, {"name": "a", "mountPath": "/data/x"}],
    }
    plans = volume_plans({"spec": {"volumes": [{"name": "a", "emptyDir": {}}]}}, Refs(), {}, ROOT, HOSTPATH)
    with pytest.raises(ConfigError, match="overlap"):
        mount_links(container, plans, ROOT)


NODE = NodeEnv(venv_bin=Path("/venv/bin"), host_cpus=2, extra={"VLLM_CACHE_ROOT": "/cache/vllm"})


def which(command: str, search: Sequence[str]) -> str | None:
    return f"{search[0]}/{command}" if command in ("vllm", "sh") else None


def test_plan_of_the_operator_like_pod() -> None:
    _, (plan,) = plan_pod(POD, FACTS, REFS, CLAIMS, NODE, ROOT, HOSTPATH, {}, which)
    fs = ROOT / "fs"
    assert plan.argv == (
        "/venv/bin/vllm", "serve", f"{HOSTPATH}/var/lib/localattn/models/tiny", "--host", "127.1.1.5",
        f"--config={fs}/etc/localattn/conf/a.json", "/tmpfoo",
    )  # fmt: skip
    assert plan.env["HOME"] == f"{fs}/tmp"
    assert plan.env["HF_HOME"] == f"{fs}/tmp/hf"
    assert plan.env["EXPANDED"] == f"{fs}/tmp/x"  # expanded after rewriting: not rewritten twice
    assert plan.env["TMPDIR"] == f"{fs}/tmp"  # /tmp is a mount: temp files go there
    assert plan.env["PATH"].startswith("/venv/bin:")
    assert plan.env["VLLM_CACHE_ROOT"] == "/cache/vllm"
    assert (plan.env["OMP_NUM_THREADS"], plan.env["VLLM_CPU_OMP_THREADS_BIND"]) == ("2", "0,1")
    assert plan.cwd == fs / "tmp" / "work"
    assert plan.memory_limit == 4 * 2**30
    assert plan.ports == {"http": 8000}
    assert {link.mount_path: link.target for link in plan.links}[
        "/models"
    ] == HOSTPATH / "var/lib/localattn/models"
    assert gpu_count(POD) == 1


def test_pod_env_overrides_node_env() -> None:
    pod = {
        "metadata": {"name": "p", "uid": "u"},
        "spec": {
            "containers": [
                {"name": "c", "image": "busybox", "env": [{"name": "OMP_NUM_THREADS", "value": "7"}]}
            ]
        },
    }
    _, (plan,) = plan_pod(pod, FACTS, Refs(), {}, NODE, ROOT, HOSTPATH, {}, which)
    assert plan.argv == ("/usr/local/bin/sh",)  # the image's entrypoint
    assert plan.env["OMP_NUM_THREADS"] == "7"
    assert plan.env["HOME"] == str(ROOT / "home")  # each pod its own HOME and TMPDIR
    assert plan.env["TMPDIR"] == str(ROOT / "tmp")


def test_unknown_image_and_missing_executable() -> None:
    assert find_image("localattn/vllm-runtime:0.2.0") is not None
    assert find_image("nginx:1.25") is None
    pod: dict[str, Any] = {
        "metadata": {"name": "p", "uid": "u"},
        "spec": {"containers": [{"name": "c", "image": "nginx:1.25"}]},
    }
    with pytest.raises(ImageError, match=r'image "nginx:1\.25" has no local program'):
        plan_pod(pod, FACTS, Refs(), {}, NODE, ROOT, HOSTPATH, {}, which)
    pod["spec"]["containers"][0] = {"name": "c", "image": "busybox", "command": ["nonesuch"]}
    with pytest.raises(ConfigError, match="executable file not found"):
        plan_pod(pod, FACTS, Refs(), {}, NODE, ROOT, HOSTPATH, {}, which)


def test_cores_spread_over_the_machine() -> None:
    assert pick_cores(1, 2, {}) == (0,)
    assert pick_cores(1, 2, {0: 1}) == (1,)
    assert pick_cores(1, 2, {0: 1, 1: 1}) == (0,)
    assert pick_cores(2, 2, {0: 3}) == (0, 1)
    assert pick_cores(2, 4, {0: 1, 1: 1}) == (2, 3)


def test_the_runtime_image_imports_the_plugin_from_the_node_agents_checkout() -> None:
    """The venv is shared between checkouts (content-keyed), and its editable install names whichever checkout
    set it up last: a runtime pod must import the plugin from the checkout the cluster runs, or vLLM logs
    "Failed to load plugin localattn" and serves without it. Other images get no project sources."""
    pod: dict[str, Any] = {"metadata": {"name": "p", "uid": "u"},
                           "spec": {"containers": [{"name": "c", "image": "localattn/vllm-runtime:0.1.0"}]}}
    _, (plan,) = plan_pod(pod, FACTS, Refs(), {}, NODE, ROOT, HOSTPATH, {}, which)
    checkout = Path(__file__).resolve().parents[2]
    dirs = [Path(d) for d in plan.env["PYTHONPATH"].split(":")]
    assert dirs == [checkout / "runtime", checkout / "kernels", checkout / "cli"]
    for package in ("localattn_runtime", "localattn_kernels", "localattn_contract"):  # what the plugin imports
        assert any((d / package / "__init__.py").exists() for d in dirs), package
    pod["spec"]["containers"][0]["env"] = [{"name": "PYTHONPATH", "value": "/mine"}]
    _, (plan,) = plan_pod(pod, FACTS, Refs(), {}, NODE, ROOT, HOSTPATH, {}, which)
    assert plan.env["PYTHONPATH"] == "/mine"  # the pod spec's env wins, as over an image's ENV
    pod["spec"]["containers"][0] = {"name": "c", "image": "vllm/vllm-openai:v0.32.0"}
    _, (plan,) = plan_pod(pod, FACTS, Refs(), {}, NODE, ROOT, HOSTPATH, {}, which)
    assert "PYTHONPATH" not in plan.env  # stock vLLM: no plugin
