"""The chart rendered offline by Helm v4 itself (helm-python-sdk embeds it: no helm binary, no cluster)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

CHART_DIR = Path(__file__).resolve().parents[2] / "helm" / "localattn"
RELEASE = "la"
NAMESPACE = "localattn-system"

Render = Callable[..., list[dict[str, Any]]]


@pytest.fixture(scope="session")
def chart() -> Iterator[Any]:
    import helm_python as helm

    with helm.Chart.load(CHART_DIR) as loaded:
        yield loaded


@pytest.fixture(scope="session")
def render(chart: Any) -> Render:
    """`render(values, name=, namespace=)` -> the manifests as dicts, in template order (NOTES.txt left out)."""

    def _render(
        values: dict[str, Any] | None = None, *, name: str = RELEASE, namespace: str = NAMESPACE
    ) -> list[dict[str, Any]]:
        files = chart.render(values or {}, name=name, namespace=namespace, is_install=True)
        docs: list[dict[str, Any]] = []
        for path in sorted(files):
            if path.endswith(".txt"):
                continue
            docs.extend(doc for doc in yaml.safe_load_all(files[path]) if doc)
        return docs

    return _render

