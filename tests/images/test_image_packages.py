"""What each image's `pip install .` really packages: the project wheel is built here from exactly the files the
Dockerfile copies (one pyproject.toml for every image), then inspected and, for the operator, imported alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
OPERATOR_PACKAGES = {"localattn_operator", "localattn_cli", "localattn_contract"}
RUNTIME_PACKAGES = {"localattn_runtime", "localattn_kernels", "localattn_cli", "localattn_contract"}


def package_set(dockerfiles: ModuleType, df: object, tmp_path: Path) -> tuple[set[str], zipfile.ZipFile]:
    build = df.stage("build")  # type: ignore[attr-defined]
    wheel = dockerfiles.build_wheel_from_copies(df, build, tmp_path)
    return dockerfiles.top_level_packages(wheel), wheel


def test_operator_image_packages_only_the_operator(dockerfiles: ModuleType, tmp_path: Path) -> None:
    packages, wheel = package_set(dockerfiles, dockerfiles.load("operator"), tmp_path)
    assert packages == OPERATOR_PACKAGES
    scripts = dockerfiles.entry_points(wheel)["console_scripts"]
    # Every console script the project declares lives in the CLI package, so each resolves inside the image.
    assert scripts == dockerfiles.pyproject()["project"]["scripts"]
    assert {target.split(":")[0].split(".")[0] for target in scripts.values()} <= OPERATOR_PACKAGES


def test_the_package_check_catches_a_runtime_in_the_operator_image(dockerfiles: ModuleType, tmp_path: Path) -> None:
    """The check above is not vacuous: copying the runtime into the operator build shows up in the package set."""
    text = dockerfiles.load("operator").path.read_text().replace(
        "COPY cli/localattn_cli/ cli/localattn_cli/",
        "COPY cli/localattn_cli/ cli/localattn_cli/\nCOPY runtime/localattn_runtime/ runtime/localattn_runtime/",
    )
    packages, _ = package_set(dockerfiles, dockerfiles.parse(text), tmp_path)
    assert "localattn_runtime" in packages and packages != OPERATOR_PACKAGES


@pytest.mark.parametrize("image", ["runtime-gpu", "runtime-cpu"])
def test_runtime_images_package_the_plugin_and_its_entry_point(
    dockerfiles: ModuleType, image: str, tmp_path: Path
) -> None:
    packages, wheel = package_set(dockerfiles, dockerfiles.load(image), tmp_path)
    assert packages == RUNTIME_PACKAGES
    points = dockerfiles.entry_points(wheel)
    project = dockerfiles.pyproject()["project"]
    assert points["vllm.general_plugins"] == project["entry-points"]["vllm.general_plugins"]
    assert points["console_scripts"] == project["scripts"]
    wheel_name = Path(wheel.filename or "").name
    assert wheel_name == f"localattn-{project['version']}-py3-none-any.whl"
    installs = [a for s in dockerfiles.load(image).stages for a in s.pip_installs() if a[0] == "install"]
    # GPU: the wheel built in the first stage goes into vLLM's image; CPU: the project is installed in the venv.
    target = f"/tmp/{wheel_name}" if image == "runtime-gpu" else "."
    assert any(a[-1] == target and "--no-deps" in a for a in installs), f"Dockerfile.{image} does not install {target}"


def test_entry_point_targets_exist() -> None:
    """The console script and the vLLM plugin resolve to callables (register() must also be idempotent)."""
    import importlib
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    targets = [*project["scripts"].values(), *project["entry-points"]["vllm.general_plugins"].values()]
    for target in targets:
        module, _, attr = target.partition(":")
        assert callable(getattr(importlib.import_module(module), attr)), target


# Run inside a Python that sees only the operator wheel's files (plus the venv's third-party packages) and that
# refuses to import the serving stack or the dev tooling, as the operator image would.
_SANDBOX = r"""
import importlib.abc, json, sys
BLOCKED = {"localattn_runtime", "localattn_kernels", "localattn_dev", "torch", "vllm", "triton", "transformers"}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is not in the operator image")
        return None
sys.meta_path.insert(0, Block())
from localattn_cli.main import build_parser
args = build_parser().parse_args(sys.argv[1:])
assert args.func.__module__ == "localattn_cli.operator_cmd", args.func
import localattn_operator.handlers, localattn_operator.metrics  # what `operator run` imports before kopf.run
import localattn_operator, localattn_cli
print(json.dumps({"operator": localattn_operator.__file__, "cli": localattn_cli.__file__,
                  "leaked": sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)}))
"""


def test_operator_run_imports_from_the_operator_files_alone(dockerfiles: ModuleType, tmp_path: Path) -> None:
    df = dockerfiles.load("operator")
    _, wheel = package_set(dockerfiles, df, tmp_path)
    site = tmp_path / "site"
    wheel.extractall(site)
    (cmd,) = df.final.all("CMD")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(site)
    result = subprocess.run(
        [sys.executable, "-c", _SANDBOX, *cmd.exec_form()],
        env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen["operator"].startswith(str(site)) and seen["cli"].startswith(str(site))
    assert seen["leaked"] == []
