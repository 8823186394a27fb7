"""Static checks of the O1Pool CRD: documented, one source of truth, defaults equal to the sidecar's."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from o1operator.render import render
from tests.operator.conftest import EXAMPLES, REPO, fake_secrets, load_example

CRD = REPO / "crds" / "o1pool.io_o1pools.yaml"
CHART_CRD = REPO / "helm" / "o1pool" / "crds" / CRD.name


def schema() -> dict[str, Any]:
    return yaml.safe_load(CRD.read_text())["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def walk(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, node
    for name, child in (node.get("properties") or {}).items():
        yield from walk(child, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from walk(node["additionalProperties"], f"{path}{{}}")


def test_every_field_has_a_description() -> None:
    undocumented = [p for p, node in walk(schema()) if p and p != ".metadata" and not node.get("description")]
    assert undocumented == [], "add descriptions (kubectl explain shows them)"


def test_chart_ships_the_same_crd() -> None:
    assert CHART_CRD.read_bytes() == CRD.read_bytes(), (
        f"copy the CRD into the chart: cp {CRD.relative_to(REPO)} {CHART_CRD.relative_to(REPO)}"
    )


def apply_defaults(node: dict[str, Any], value: Any) -> Any:
    """Structural-schema defaulting as the API server does it (defaults of absent fields, recursively)."""
    if isinstance(value, dict) and "properties" in node:
        for name, child in node["properties"].items():
            if name not in value and "default" in child:
                value[name] = copy.deepcopy(child["default"])
            if name in value:
                value[name] = apply_defaults(child, value[name])
    elif isinstance(value, dict) and isinstance(node.get("additionalProperties"), dict):
        return {k: apply_defaults(node["additionalProperties"], v) for k, v in value.items()}
    elif isinstance(value, list) and isinstance(node.get("items"), dict):
        return [apply_defaults(node["items"], v) for v in value]
    return value


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_crd_defaults_render_like_sidecar_defaults(example: Path) -> None:
    pool = load_example(example)
    secrets = fake_secrets(pool["spec"])
    defaulted = copy.deepcopy(pool)
    defaulted["spec"] = apply_defaults(schema()["properties"]["spec"], defaulted["spec"])
    assert defaulted["spec"] != pool["spec"], "the example should rely on some defaults"
    assert render(defaulted, secrets).config_yaml == render(pool, secrets).config_yaml


def test_shutdown_queue_seconds_takes_zero_as_the_sidecar_does() -> None:
    """0 hands waiting requests back at once on SIGTERM; the CRD must not refuse what the sidecar takes."""
    queue_seconds = dict(walk(schema()))[".spec.shutdown.queueSeconds"]
    assert queue_seconds["minimum"] == 0 and not queue_seconds.get("exclusiveMinimum")
    pool = load_example(EXAMPLES[0])
    pool["spec"]["shutdown"] = {"graceSeconds": 10, "queueSeconds": 0}
    rendering = render(pool, fake_secrets(pool["spec"]))
    assert rendering.config is not None, rendering.error
    assert rendering.config.shutdown.queue_s == 0
