"""Golden files of everything rendered from each examples/o1pool-*.yaml (regenerate: make golden)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from o1operator import cacheservice, gateway
from o1operator.render import get_config_map, get_key_secret, redact_secret, render, with_salt
from tests.operator.conftest import EXAMPLES, assert_golden, fake_secrets, load_example


class _BlockDumper(yaml.SafeDumper):
    """Multi-line strings (the embedded config.yaml) as literal blocks, so golden diffs stay readable."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_BlockDumper.add_representer(str, _str)


def dump(obj: object) -> str:
    return yaml.dump(obj, Dumper=_BlockDumper, sort_keys=False)


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_golden_rendering(example: Path) -> None:
    pool = load_example(example)
    secrets = with_salt(fake_secrets(pool["spec"]), pool["metadata"]["name"], lambda: "fake-salt")
    rendering = render(pool, secrets)
    assert rendering.error is None, rendering.error
    assert rendering.config_yaml is not None
    assert_golden(f"{example.stem}.config.yaml", rendering.config_yaml)
    assert_golden(f"{example.stem}.configmap.yaml", dump(get_config_map(pool, rendering)))
    assert_golden(f"{example.stem}.secret.yaml", dump(redact_secret(get_key_secret(pool, rendering))))
    if rendering.cache_service is not None:
        images = cacheservice.Images(sidecar="o1pool-sidecar:golden", cache="o1pool-cache:golden")
        image = cacheservice.image_for(pool, rendering.cache_service, images)
        manifests = cacheservice.get_manifests(pool, rendering.cache_service, image)
        assert_golden(f"{example.stem}.cache-service.yaml", yaml.dump_all(manifests, sort_keys=False))
    rendered_gateway = gateway.render_gateway(pool, rendering, secrets)
    if rendered_gateway is not None:
        assert rendered_gateway.error is None, rendered_gateway.error
        manifests = gateway.get_manifests(pool, rendered_gateway, "o1pool-sidecar:golden")
        assert_golden(f"{example.stem}.gateway.yaml", "---\n".join(dump(m) for m in manifests))


def test_golden_files_have_no_strays() -> None:
    expected = {f"{p.stem}.{kind}.yaml" for p in EXAMPLES for kind in ("config", "configmap", "secret")}
    expected |= {f"{p.stem}.cache-service.yaml" for p in EXAMPLES if "persistent:" in p.read_text()}
    expected |= {f"{p.stem}.gateway.yaml" for p in EXAMPLES if "gateway:" in p.read_text()}
    expected |= {f"injected-{p.stem}.yaml" for p in Path(__file__).parent.joinpath("pods").glob("*.yaml")}
    present = {p.name for p in Path(__file__).parent.joinpath("golden").glob("*.yaml")}
    assert present == expected, "remove golden files of deleted examples or pods"
