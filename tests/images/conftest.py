"""A small Dockerfile reader for the image tests (no Docker engine runs here, and no parser is installed).

It understands what our Dockerfiles use: comments, line continuations, stages (`FROM image AS name`),
exec-form (JSON) and shell-form arguments, `ENV k=v ...`, and the pip commands inside `RUN`.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
IMAGES = ("operator", "runtime-gpu", "runtime-cpu")


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case: FROM, RUN, COPY...
    args: str  # the raw arguments, continuations joined
    line: int

    def exec_form(self) -> list[str] | None:
        """The JSON array of `CMD ["a", "b"]`-style arguments, or None for the shell form."""
        if self.args.startswith("["):
            value = json.loads(self.args)
            assert isinstance(value, list), self
            return [str(v) for v in value]
        return None


@dataclass
class Stage:
    image: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def env(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for ins in self.all("ENV"):
            for token in shlex.split(ins.args):
                key, sep, value = token.partition("=")
                assert sep, f"line {ins.line}: use ENV key=value"
                out[key] = value
        return out

    def copies(self) -> list[tuple[list[str], str, dict[str, str]]]:
        """(sources, destination, flags such as --from) of every COPY."""
        out = []
        for ins in self.all("COPY"):
            parts = ins.exec_form() or shlex.split(ins.args)
            flags = dict(p[2:].split("=", 1) for p in parts if p.startswith("--"))
            paths = [p for p in parts if not p.startswith("--")]
            out.append((paths[:-1], paths[-1], flags))
        return out

    def pip_installs(self) -> list[list[str]]:
        """The argument lists (after `install`/`wheel`) of every pip command in a RUN."""
        out = []
        for ins in self.all("RUN"):
            for words in _commands(ins.args):
                for i, word in enumerate(words[:-1]):
                    # `.../bin/pip install`, `pip wheel`, `python -m pip install`
                    if (word.endswith("/pip") or word == "pip") and words[i + 1] in ("install", "wheel"):
                        out.append(words[i + 1:])
        return out


def _commands(shell: str) -> list[list[str]]:
    """The simple commands of a shell line, split at `&&`, `||`, `;` and `|` outside quotes."""
    lexer = shlex.shlex(shell, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    commands: list[list[str]] = [[]]
    for token in lexer:
        if token and set(token) <= set(";&|"):
            commands.append([])
        else:
            commands[-1].append(token)
    return [c for c in commands if c]


@dataclass
class Dockerfile:
    path: Path
    stages: list[Stage]

    @property
    def final(self) -> Stage:
        return self.stages[-1]

    def stage(self, name: str) -> Stage:
        return next(s for s in self.stages if s.name == name)


def parse(text: str, path: Path = Path("Dockerfile")) -> Dockerfile:
    """Instructions with continuations joined; comment lines inside a continuation are dropped, as Docker does."""
    instructions: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending.append(stripped[:-1].strip())
            continue
        pending.append(stripped)
        joined = " ".join(p for p in pending if p)
        pending = []
        keyword, _, args = joined.partition(" ")
        instructions.append(Instruction(keyword.upper(), args.strip(), start))
    assert not pending, f"{path}: dangling line continuation"
    stages: list[Stage] = []
    for ins in instructions:
        if ins.keyword == "FROM":
            words = ins.args.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            assert len(words) in (1, 3), f"{path}:{ins.line}: FROM image [AS name]"
            stages.append(Stage(words[0], name))
        else:
            assert stages, f"{path}:{ins.line}: {ins.keyword} before FROM"
            stages[-1].instructions.append(ins)
    return Dockerfile(path, stages)


def load(image: str) -> Dockerfile:
    path = ROOT / f"Dockerfile.{image}"
    return parse(path.read_text(), path)


def build_wheel_from_copies(dockerfile: Dockerfile, stage: Stage, workdir: Path) -> zipfile.ZipFile:
    """Build the project wheel from exactly the files `stage` COPYs from the context, as the image build does.

    This is what decides the image's package set: one pyproject.toml, only the copied source folders.
    """
    context = workdir / "context"
    context.mkdir()
    for sources, _dest, flags in stage.copies():
        if "from" in flags:
            continue
        for source in sources:
            src = ROOT / source
            target = context / source.rstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            if src.is_dir():
                shutil.copytree(src, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            else:
                shutil.copy2(src, target)
    dist = workdir / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(dist), str(context)],
        check=True, timeout=300, capture_output=True, cwd=workdir,
    )
    (wheel,) = dist.glob("*.whl")
    return zipfile.ZipFile(wheel)


def top_level_packages(wheel: zipfile.ZipFile) -> set[str]:
    return {name.split("/")[0] for name in wheel.namelist() if not name.split("/")[0].endswith(".dist-info")}


def entry_points(wheel: zipfile.ZipFile) -> dict[str, dict[str, str]]:
    import configparser

    (name,) = [n for n in wheel.namelist() if n.endswith(".dist-info/entry_points.txt")]
    parser = configparser.ConfigParser()
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(wheel.read(name).decode())
    return {section: dict(parser[section]) for section in parser.sections()}


def pyproject() -> dict[str, Any]:
    import tomllib

    return tomllib.loads((ROOT / "pyproject.toml").read_text())


@pytest.fixture(scope="session")
def dockerfiles() -> ModuleType:
    """This module (the reader and its helpers): conftest modules cannot be imported by name from tests."""
    return sys.modules[__name__]
