"""Where the operator counts a pool's live sidecars (pure part)."""

from __future__ import annotations

from o1operator.render import render
from o1operator.sidecars import get_sidecar_probe
from tests.operator.conftest import FAKE_REDIS_PASSWORD, REPO, fake_secrets, load_example

EXAMPLES = REPO / "examples"


def test_probe_uses_the_sidecars_heartbeat_key_and_password() -> None:
    pool = load_example(EXAMPLES / "o1pool-multi-account.yaml")
    probe = get_sidecar_probe(render(pool, fake_secrets(pool["spec"])))
    assert probe is not None
    assert probe.key == "{research:default/research}:sidecars"
    assert probe.url == "redis://redis.example:6379/0"
    assert probe.password == FAKE_REDIS_PASSWORD
    assert probe.stale_after_s == 6.0
    assert FAKE_REDIS_PASSWORD not in repr(probe)


def test_no_probe_without_redis_or_config() -> None:
    pool = load_example(EXAMPLES / "o1pool-basic.yaml")
    assert get_sidecar_probe(render(pool, {})) is None
    del pool["spec"]["redis"]
    assert get_sidecar_probe(render(pool, fake_secrets(pool["spec"]))) is None
    pool = load_example(EXAMPLES / "o1pool-basic.yaml")
    probe = get_sidecar_probe(render(pool, fake_secrets(pool["spec"])))
    assert probe is not None and probe.password is None and probe.key == "{o1pool:default/basic}:sidecars"
