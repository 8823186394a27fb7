"""Rendering an O1Pool into sidecar config, key Secret and manifests (pure; no cluster)."""

from __future__ import annotations

import base64
import copy
import hashlib
from datetime import UTC, datetime

import pytest
import yaml

from o1operator import cacheservice
from o1operator.objects import HASH_ANNOTATION, POOL_LABEL
from o1operator.render import (
    KEY_MOUNT,
    get_config_map,
    get_key_secret,
    get_key_states,
    get_sidecar_config,
    referenced_secrets,
    render,
    with_salt,
)
from o1operator.status import get_status
from o1sidecar.config import SidecarConfig
from tests.operator.conftest import EXAMPLES, REPO, b64, fake_secrets, load_example, secret_values

BASIC = REPO / "examples" / "o1pool-basic.yaml"
MULTI = REPO / "examples" / "o1pool-multi-account.yaml"
NOW = datetime(2026, 12, 1, tzinfo=UTC)


def pool_with(spec_patch: dict, base=BASIC) -> dict:
    pool = load_example(base)
    pool["spec"] |= spec_patch
    return pool


def test_examples_render_to_valid_config_without_key_values() -> None:
    for path in EXAMPLES:
        pool = load_example(path)
        secrets = fake_secrets(pool["spec"])
        rendering = render(pool, secrets)
        assert rendering.error is None, (path, rendering.error)
        config = SidecarConfig.from_dict(yaml.safe_load(rendering.config_yaml))
        assert config.pool.name == pool["metadata"]["name"]
        config_map = yaml.safe_dump(get_config_map(pool, rendering))
        for value in secret_values(secrets):
            assert value not in config_map, f"{path.name}: a secret value leaked into the ConfigMap"


def test_key_files_live_under_the_key_mount_and_match_secret_data() -> None:
    pool = load_example(MULTI)
    secrets = fake_secrets(pool["spec"])
    rendering = render(pool, secrets)
    config = SidecarConfig.from_dict(yaml.safe_load(rendering.config_yaml))
    files = {str(k.file) for a in config.accounts for k in a.keys}
    files.add(config.redis.password_file and str(config.redis.password_file))
    assert all(f.startswith(str(KEY_MOUNT) + "/") for f in files)
    assert {str(KEY_MOUNT / name) for name in rendering.key_data} == files
    assert (
        base64.b64decode(rendering.key_data["org-main.primary"]).decode()
        == "sk-fake-openai-keys-primary-5ecret"
    )


def test_missing_secret_drops_its_keys_and_keeps_the_rest() -> None:
    pool = load_example(MULTI)
    secrets = fake_secrets(pool["spec"])
    del secrets["openai-team-b"]
    rendering = render(pool, secrets)
    assert rendering.error is None
    assert (rendering.keys_ready, len(rendering.keys)) == (3, 4)
    assert (rendering.accounts_ready, rendering.accounts_total) == (2, 3)
    config = yaml.safe_load(rendering.config_yaml)
    assert [a["name"] for a in config["accounts"]] == ["org-main", "azure-east"]
    assert "team-b.main" not in rendering.key_data
    [missing] = [k for k in rendering.keys if not k.ready]
    assert missing.problem == "SecretNotFound"
    assert "openai-team-b" in missing.describe_problem()


def test_missing_data_key_and_empty_key_are_told_apart() -> None:
    pool = load_example(MULTI)
    secrets = fake_secrets(pool["spec"])
    secrets["openai-keys"] = {"primary": b64("  \n")}
    rendering = render(pool, secrets)
    problems = {k.name: k.problem for k in rendering.keys if not k.ready}
    assert problems == {"primary": "KeyEmpty", "secondary": "SecretKeyNotFound"}


def test_no_usable_key_fails_naming_the_secret() -> None:
    pool = load_example(BASIC)
    rendering = render(pool, {})
    assert rendering.config_yaml is None and rendering.key_data == {}
    assert rendering.error is not None and rendering.error.reason == "NoUsableKeys"
    assert "'openai-keys'" in rendering.error.message


def test_rotation_changes_hash_and_same_input_keeps_it() -> None:
    pool = load_example(BASIC)
    secrets = fake_secrets(pool["spec"])
    first = render(pool, secrets)
    assert render(copy.deepcopy(pool), copy.deepcopy(secrets)).config_hash == first.config_hash
    secrets["openai-keys"]["primary"] = b64("sk-rotated")
    rotated = render(pool, secrets)
    assert rotated.config_hash != first.config_hash
    assert rotated.config_yaml == first.config_yaml
    spec_change = render(pool_with({"queue": {"defaultPriority": 3}}), fake_secrets(pool["spec"]))
    assert spec_change.config_hash != first.config_hash


def test_manifests_are_owned_by_the_pool_and_carry_the_hash() -> None:
    pool = load_example(BASIC)
    rendering = render(pool, fake_secrets(pool["spec"]))
    for manifest in (get_config_map(pool, rendering), get_key_secret(pool, rendering)):
        meta = manifest["metadata"]
        assert meta["annotations"][HASH_ANNOTATION] == rendering.config_hash
        [owner] = meta["ownerReferences"]
        assert owner == {
            "apiVersion": "o1pool.io/v1alpha1",
            "kind": "O1Pool",
            "name": "basic",
            "uid": pool["metadata"]["uid"],
            "controller": True,
        }
        assert meta["namespace"] == "default"


def test_redis_url_secret_password_moves_to_a_file() -> None:
    pool = load_example(MULTI)
    secrets = fake_secrets(pool["spec"])
    secrets["o1pool-redis"]["url"] = b64("redis://app:p%40ss@redis:6379/2?password=q&db=2")
    rendering = render(pool, secrets)
    redis = yaml.safe_load(rendering.config_yaml)["redis"]
    assert redis["url"] == "redis://app@redis:6379/2?db=2"
    assert redis["password_file"] == str(KEY_MOUNT / "redis-password")
    assert base64.b64decode(rendering.key_data["redis-password"]).decode() == "q"


@pytest.mark.parametrize(
    ("url", "rendered", "password"),
    [
        (
            "redis://:p%40ss%2Fw%3Ard@redis:6379/0",
            "redis://redis:6379/0",
            "p@ss/w:rd",
        ),  # decoded as redis-py does
        ("unix:///var/run/redis/redis.sock?db=3", "unix:///var/run/redis/redis.sock?db=3", None),
        ("unix://:s3cret@/var/run/redis.sock", "unix:///var/run/redis.sock", "s3cret"),
    ],
)
def test_redis_url_secret_forms(url: str, rendered: str, password: str | None) -> None:
    pool = load_example(MULTI)
    secrets = fake_secrets(pool["spec"])
    secrets["o1pool-redis"]["url"] = b64(url)
    rendering = render(pool, secrets)
    assert rendering.error is None, rendering.error
    redis = yaml.safe_load(rendering.config_yaml)["redis"]
    assert redis["url"] == rendered
    SidecarConfig.from_dict(yaml.safe_load(rendering.config_yaml))  # the sidecar accepts what it is given
    stored = rendering.key_data.get("redis-password")
    assert (base64.b64decode(stored).decode() if stored else None) == password


def test_redis_url_with_an_inline_password_is_refused_not_copied() -> None:
    for url in ("redis://:hunter2@redis:6379/0", "redis://redis:6379/0?password=hunter2"):
        pool = pool_with({"redis": {"url": url}})
        rendering = render(pool, fake_secrets(pool["spec"]))
        assert rendering.error is not None and rendering.error.reason == "RedisURLHasPassword"
        assert "hunter2" not in rendering.error.message
        assert "hunter2" not in (rendering.config_yaml or "")


def test_redis_tls_and_password_secret() -> None:
    redis = {"url": "redis://redis:6379/0", "tls": True, "passwordSecretRef": {"name": "rp", "key": "pw"}}
    pool = pool_with({"redis": redis})
    keys_only = {"openai-keys": fake_secrets(pool["spec"])["openai-keys"]}
    secrets = keys_only | {"rp": {"pw": b64("hunter2")}}
    rendering = render(pool, secrets)
    config = yaml.safe_load(rendering.config_yaml)
    assert config["redis"]["url"] == "rediss://redis:6379/0"
    assert "hunter2" not in rendering.config_yaml
    missing = render(pool, keys_only)
    assert missing.error is not None and missing.error.reason == "RedisSecretNotFound"
    assert "'rp'" in missing.error.message


def test_redis_ca_from_a_secret_is_mounted_for_a_tls_url_only() -> None:
    ca = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----"
    redis = {"url": "redis://redis:6380/0", "tls": True, "caSecretRef": {"name": "redis-ca", "key": "ca.crt"}}
    pool = pool_with({"redis": redis})
    assert "redis-ca" in referenced_secrets(pool["spec"])
    keys_only = {"openai-keys": fake_secrets(pool["spec"])["openai-keys"]}
    rendering = render(pool, keys_only | {"redis-ca": {"ca.crt": b64(ca)}})
    config = yaml.safe_load(rendering.config_yaml)
    assert config["redis"]["tls_ca_file"] == "/etc/o1pool/keys/redis-ca.crt"
    assert base64.b64decode(rendering.key_data["redis-ca.crt"]).decode() == ca + "\n"
    plain = render(
        pool_with({"redis": {**redis, "tls": False}}), keys_only | {"redis-ca": {"ca.crt": b64(ca)}}
    )
    assert plain.error is not None and plain.error.reason == "RedisCAWithoutTLS"
    assert "set spec.redis.tls: true" in plain.error.message
    missing = render(pool, keys_only)
    assert missing.error is not None and missing.error.reason == "RedisSecretNotFound"


def test_redis_cluster_is_rendered_when_on_and_needs_a_tcp_url_of_database_0() -> None:
    keys_only = {"openai-keys": fake_secrets(pool_with({})["spec"])["openai-keys"]}
    on = render(pool_with({"redis": {"url": "redis://redis-0.redis:6379", "cluster": True}}), keys_only)
    assert yaml.safe_load(on.config_yaml)["redis"]["cluster"] is True
    off = render(pool_with({"redis": {"url": "redis://redis:6379/0", "cluster": False}}), keys_only)
    assert "cluster" not in yaml.safe_load(off.config_yaml)["redis"]  # as before the field existed
    unix = render(pool_with({"redis": {"url": "unix:///run/redis.sock", "cluster": True}}), keys_only)
    assert unix.error is not None and unix.error.reason == "RedisClusterURL"
    db = render(pool_with({"redis": {"url": "redis://redis:6379/2", "cluster": True}}), keys_only)
    assert db.error is not None and db.error.reason == "InvalidConfig" and "database 0" in db.error.message


def test_redis_url_secret_that_is_not_a_url_is_rejected_without_echoing_it() -> None:
    pool = load_example(MULTI)
    secrets = fake_secrets(pool["spec"])
    secrets["o1pool-redis"]["url"] = b64("redis//:leaky@host")
    rendering = render(pool, secrets)
    assert rendering.error is not None and rendering.error.reason == "RedisSecretInvalid"
    assert "leaky" not in rendering.error.message


def test_model_outside_the_tier_without_limits_is_invalid_config() -> None:
    pool = load_example(BASIC)
    pool["spec"]["accounts"][0]["models"] = {"gpt-4o": {"rpm": 10}}
    rendering = render(pool, fake_secrets(pool["spec"]))
    assert rendering.error is not None and rendering.error.reason == "InvalidConfig"
    assert "gpt-4o" in rendering.error.message


def test_spec_fields_map_onto_sidecar_config() -> None:
    pool = load_example(MULTI)
    config = SidecarConfig.from_dict(yaml.safe_load(render(pool, fake_secrets(pool["spec"])).config_yaml))
    assert config.queue.default_deadline_ms == 60_000 and config.queue.max_deadline_ms == 300_000
    assert config.cache.l1_entries == 2000 and config.cache.l2_ttl_s == 3600
    assert config.tokens.default_max_tokens == 8192
    assert config.fallback.chains == {"o1-preview": ["o1-mini", "gpt-4o"], "o1": ["o1-mini"]}
    team_b = next(a for a in config.accounts if a.name == "team-b")
    assert team_b.limits_for("o1").rpm == 40
    assert team_b.burst_s == 0.5 and team_b.adaptive is True
    assert team_b.limits_for("gpt-4o").concurrency == 50
    azure = next(a for a in config.accounts if a.name == "azure-east")
    assert azure.api_version == "2024-10-21" and azure.deployments["o1"] == "o1-east"
    assert config.listen.host == "127.0.0.1"


def test_pacing_and_adaptive_limits_reach_the_sidecar() -> None:
    pool = load_example(BASIC)
    pool["spec"]["accounts"][0] |= {"burstSeconds": 60, "adaptiveLimits": False}
    config = SidecarConfig.from_dict(yaml.safe_load(render(pool, fake_secrets(pool["spec"])).config_yaml))
    assert config.accounts[0].burst_s == 60.0 and config.accounts[0].adaptive is False


def test_tracing_reaches_the_sidecar_and_is_off_by_default() -> None:
    pool = load_example(BASIC)
    config = render(pool, fake_secrets(pool["spec"])).config
    assert config is not None and config.tracing.otlp_endpoint is None
    pool["spec"]["tracing"] = {"otlpEndpoint": "http://otel-collector.monitoring:4318", "sampleRatio": 0.25}
    config = SidecarConfig.from_dict(yaml.safe_load(render(pool, fake_secrets(pool["spec"])).config_yaml))
    assert config.tracing.otlp_endpoint == "http://otel-collector.monitoring:4318"
    assert config.tracing.sample_ratio == 0.25
    pool["spec"]["tracing"] = {"sampleRatio": 0.25}  # (the CRD's rule refuses it too)
    refused = render(pool, fake_secrets(pool["spec"]))
    assert refused.error is not None and refused.error.reason == "InvalidConfig"
    assert "tracing.sample_ratio applies to exported traces" in refused.error.message


def test_audit_reaches_the_sidecar_and_what_only_applies_to_audit_lines_is_refused_without_it() -> None:
    audit = {"enabled": True, "sampleRatio": 0.25, "content": True, "maskPatterns": [r"ACME-\d{6}"]}
    pool = pool_with({"audit": audit})
    rendering = render(pool, fake_secrets(pool["spec"]))
    assert rendering.error is None and rendering.config is not None, rendering.error
    rendered = SidecarConfig.from_dict(yaml.safe_load(rendering.config_yaml)).audit
    assert (rendered.enabled, rendered.sample_ratio, rendered.content) == (True, 0.25, True)
    assert rendered.mask_patterns == [r"ACME-\d{6}"]
    plain = render(pool_with({}), fake_secrets(pool["spec"]))
    assert rendering.config_hash != plain.config_hash
    # (the CRD's rules refuse these too)
    for audit, message in [
        ({"content": True}, "audit.content applies to audit lines: set audit.enabled: true"),
        ({"enabled": True, "maskPatterns": ["x"]}, "audit.mask_patterns apply to logged content"),
        ({"enabled": True, "content": True, "maskPatterns": ["(unclosed"]}, "is not a regular expression"),
    ]:
        refused = render(pool_with({"audit": audit}), fake_secrets(pool["spec"]))
        assert refused.error is not None and refused.error.reason == "InvalidConfig", audit
        assert message in refused.error.message


def test_prices_reach_the_sidecar_and_an_absent_cached_input_price_is_left_to_it() -> None:
    prices = {"o1": {"input": 12, "cachedInput": 6, "output": 48}, "o1-mini": {"input": 1, "output": 4}}
    pool = pool_with({"prices": prices})
    keys = get_key_states(pool["spec"], fake_secrets(pool["spec"]))
    assert get_sidecar_config(pool, keys, {})["prices"] == {
        "o1": {"input": 12, "cached_input": 6, "output": 48},
        "o1-mini": {"input": 1, "output": 4},
    }
    rendering = render(pool, fake_secrets(pool["spec"]))
    assert rendering.error is None and rendering.config is not None, rendering.error
    config = SidecarConfig.from_dict(yaml.safe_load(rendering.config_yaml))
    assert (config.prices["o1"].input, config.prices["o1"].cached_input, config.prices["o1"].output) == (
        12,
        6,
        48,
    )
    assert config.prices["o1-mini"].cached_input is None
    unserved = render(
        pool_with({"prices": {"my-finetune": {"input": 1, "output": 2}}}), fake_secrets(pool["spec"])
    )
    assert unserved.error is not None and unserved.error.reason == "InvalidConfig"
    assert "'my-finetune'" in unserved.error.message


CLIENTS = [
    {
        "name": "web",
        "match": {"namespaces": ["team-a"], "workloads": ["Deployment/web"], "serviceAccounts": ["web"]},
        "maxPriority": 5,
        "limits": {"rpm": 60, "tpm": 200000},
        "budgets": {"dailyUsd": 10.5, "monthlyUsd": 200, "dailyTokens": 1000000, "monthlyTokens": 20000000},
        "onBudget": "downgrade",
    },
    {
        "name": "batch",
        "match": {"namespaces": ["team-b"]},
        "limits": {"tpm": 50000},
        "budgets": {"dailyTokens": 5000},
    },
    {"name": "everyone-else", "match": {}, "weight": 0.5},
]


def test_clients_reach_the_sidecar_with_its_keys() -> None:
    pool = pool_with({"clients": CLIENTS})
    keys = get_key_states(pool["spec"], fake_secrets(pool["spec"]))
    assert get_sidecar_config(pool, keys, {})["clients"] == [
        {
            "name": "web",
            "max_priority": 5,
            "on_budget": "downgrade",
            "match": {"namespaces": ["team-a"], "workloads": ["Deployment/web"], "service_accounts": ["web"]},
            "limits": {"rpm": 60, "tpm": 200000},
            "budgets": {
                "daily_usd": 10.5,
                "monthly_usd": 200,
                "daily_tokens": 1000000,
                "monthly_tokens": 20000000,
            },
        },
        {
            "name": "batch",
            "match": {"namespaces": ["team-b"]},
            "limits": {"tpm": 50000},
            "budgets": {"daily_tokens": 5000},
        },
        {"name": "everyone-else", "weight": 0.5, "match": {}},
    ]
    rendering = render(pool, fake_secrets(pool["spec"]))
    assert rendering.error is None and rendering.config is not None, rendering.error
    web, batch, rest = SidecarConfig.from_dict(yaml.safe_load(rendering.config_yaml)).clients
    assert (web.name, web.max_priority, web.on_budget) == ("web", 5, "downgrade")
    assert (web.match.namespaces, web.match.workloads, web.match.service_accounts) == (
        ["team-a"],
        ["Deployment/web"],
        ["web"],
    )
    assert (web.budgets.daily_usd, web.budgets.monthly_usd) == (10.5, 200)
    assert (web.budgets.daily_tokens, web.budgets.monthly_tokens) == (1000000, 20000000)
    assert (batch.on_budget, batch.budgets.daily_tokens, batch.budgets.daily_usd) == ("refuse", 5000, None)
    assert web.limits is not None and (web.limits.rpm, web.limits.tpm) == (60, 200000)
    assert batch.limits is not None and (batch.limits.rpm, batch.limits.tpm) == (None, 50000)
    assert (rest.name, rest.weight, rest.max_priority, rest.budgets.any(), rest.limits) == (
        "everyone-else",
        0.5,
        None,
        False,
        None,
    )
    assert rendering.config.client_for("team-c", "Job/x", "default") == rest
    assert rendering.config.client_for("team-b", "Deployment/batch", "default") == batch
    assert rendering.config_hash != render(pool_with({}), fake_secrets(pool["spec"])).config_hash


def test_clients_budgets_or_limits_without_redis_or_on_budget_without_budgets_are_refused() -> None:
    """(The CRD's rules refuse these first; they are what a pool gets past an older CRD.)"""
    no_redis = pool_with({"clients": CLIENTS[1:]})
    del no_redis["spec"]["redis"]
    refused = render(no_redis, fake_secrets(no_redis["spec"]))
    assert refused.error is not None and refused.error.reason == "InvalidConfig"
    assert "clients[batch] has budgets" in refused.error.message
    unbudgeted = pool_with({"clients": CLIENTS[2:]})  # (clients without budgets need no Redis)
    del unbudgeted["spec"]["redis"]
    assert render(unbudgeted, fake_secrets(unbudgeted["spec"])).error is None
    capped = pool_with({"clients": [{"name": "capped", "match": {}, "limits": {"rpm": 10}}]})
    del capped["spec"]["redis"]
    refused = render(capped, fake_secrets(capped["spec"]))
    assert refused.error is not None and refused.error.reason == "InvalidConfig"
    assert "clients[capped] has limits" in refused.error.message
    unlimited = pool_with({"clients": [{"name": "capped", "match": {}, "limits": {}}]})
    refused = render(unlimited, fake_secrets(unlimited["spec"]))
    assert refused.error is not None and refused.error.reason == "InvalidConfig"
    assert "a client's limits need rpm, tpm or both" in refused.error.message
    downgrade = pool_with({"clients": [{"name": "web", "match": {}, "onBudget": "downgrade"}]})
    refused = render(downgrade, fake_secrets(downgrade["spec"]))
    assert refused.error is not None and refused.error.reason == "InvalidConfig"
    assert "clients[web].on_budget applies once a budget is spent" in refused.error.message


def test_a_pool_without_audit_prices_or_clients_keeps_the_config_it_had_before_them() -> None:
    """An operator upgrade must not change the config (and so the hash, which rolls pods that copy it) of
    a pool that sets none of them."""
    added = {"audit", "prices", "clients"}
    for path in EXAMPLES:
        pool = load_example(path)
        if added & set(pool["spec"]):  # (examples/o1pool-gateway.yaml has clients)
            continue
        keys = get_key_states(pool["spec"], fake_secrets(pool["spec"]))
        assert not added & set(get_sidecar_config(pool, keys, {}))
        rendered = yaml.safe_load(render(pool, fake_secrets(pool["spec"])).config_yaml)
        assert not added & set(rendered), f"{path.name}: the sidecar config dumps them"
        empty = {**pool, "spec": {**pool["spec"], "clients": []}}
        assert (
            render(empty, fake_secrets(pool["spec"])).config_hash
            == render(pool, fake_secrets(pool["spec"])).config_hash
        )


def test_referenced_secrets() -> None:
    pool = load_example(MULTI)
    assert referenced_secrets(pool["spec"]) == {
        "openai-keys",
        "openai-team-b",
        "azure-openai",
        "o1pool-redis",
    }


def test_the_config_hash_is_an_hmac_under_a_salt_kept_in_the_pools_secret() -> None:
    """The hash shown on pods and in status cannot confirm a guess of a key without the pool's salt;
    the salt is made once and kept."""
    pool = load_example(REPO / "examples" / "o1pool-basic.yaml")
    plain = fake_secrets(pool["spec"])
    one = with_salt(plain, "basic", lambda: "salt-one")
    assert with_salt(one, "basic", lambda: "another") is one  # an existing salt is kept
    two = with_salt(plain, "basic", lambda: "salt-two")
    first, second = render(pool, one), render(pool, two)
    assert first.config_hash and second.config_hash and first.config_hash != second.config_hash
    assert render(pool, one).config_hash == first.config_hash
    assert first.key_data["config-hash-salt"] == one["basic-o1pool-keys"]["config-hash-salt"]
    unsalted = hashlib.sha256(first.config_yaml.encode())  # what an offline guess would compute
    for name in sorted(k for k in first.key_data if k != "config-hash-salt"):
        unsalted.update(b"\0" + name.encode() + b"\0" + first.key_data[name].encode())
    assert unsalted.hexdigest() != first.config_hash


def test_an_account_may_only_name_an_allowed_upstream_host() -> None:
    """The sidecar sends the pool's keys to each account's baseURL: with an allowlist, whoever edits
    an O1Pool cannot point them at another host."""
    pool = load_example(REPO / "examples" / "o1pool-multi-account.yaml")
    secrets = fake_secrets(pool["spec"])
    allowed = ("api.openai.com", "*.openai.azure.com")
    assert render(pool, secrets, allowed).error is None  # openai (default baseURL) and an Azure resource
    pool["spec"]["accounts"][1]["baseURL"] = "https://collector.evil.example/v1"
    refused = render(pool, secrets, allowed)
    assert refused.error is not None and refused.error.reason == "UpstreamNotAllowed"
    assert "spec.accounts[1].baseURL names host 'collector.evil.example'" in refused.error.message
    assert refused.config_yaml is None and refused.key_data == {}
    assert render(pool, secrets).error is None  # no allowlist: any host


def test_every_sidecar_option_a_pool_needs_is_reachable_from_the_spec() -> None:
    """Timeouts, retries, body size, context check, shutdown, outage policy and Redis timeouts set in
    the O1Pool arrive in the rendered sidecar config."""
    pool = load_example(REPO / "examples" / "o1pool-basic.yaml")
    spec = pool["spec"]
    spec["timeouts"] = {
        "connectSeconds": 3,
        "readSeconds": 90,
        "totalSeconds": 600,
        "requestBodySeconds": 10,
        "requestHeadSeconds": 20,
    }
    spec["retry"] = {"maxAttempts": 5, "backoffBaseSeconds": 0.2, "maxRetryAfterSeconds": 60}
    spec["maxBodyBytes"] = 2_000_000
    spec["context"] = {"windows": {"o1": 100_000}, "onOverflow": "refuse"}
    spec["shutdown"] = {"graceSeconds": 40, "queueSeconds": 10}
    spec["fallback"] = {"outageFailures": 8, "outageProbeSeconds": 15}
    spec["redis"] |= {
        "connectTimeoutMs": 500,
        "opTimeoutMs": 400,
        "heartbeatIntervalSeconds": 1,
        "breakerFailures": 4,
        "breakerResetSeconds": 5,
    }
    rendering = render(pool, fake_secrets(spec))
    assert rendering.error is None and rendering.config is not None, rendering.error
    c = rendering.config
    assert (c.timeouts.connect_s, c.timeouts.read_s, c.timeouts.total_s) == (3, 90, 600)
    assert (c.timeouts.request_body_s, c.timeouts.request_head_s) == (10, 20)
    assert (c.retry.max_attempts, c.retry.backoff_base_s, c.retry.max_retry_after_s) == (5, 0.2, 60)
    assert c.max_body_bytes == 2_000_000
    assert (c.context.windows, c.context.on_overflow) == ({"o1": 100_000}, "refuse")
    assert (c.shutdown.grace_s, c.shutdown.queue_s) == (40, 10)
    assert (c.fallback.outage_failures, c.fallback.outage_probe_s) == (8, 15)
    r = c.redis
    assert (
        r.connect_timeout_ms,
        r.op_timeout_ms,
        r.heartbeat_interval_s,
        r.breaker_failures,
        r.breaker_reset_s,
    ) == (
        500,
        400,
        1,
        4,
        5,
    )


def test_a_persistent_cache_renders_a_cache_service_the_sidecars_use() -> None:
    persistent = {"enabled": True, "claimName": "answers", "lookupBudgetMilliseconds": 40, "ttlSeconds": 600}
    pool = pool_with({"cache": {"persistent": persistent}})
    rendering = render(pool, fake_secrets(pool["spec"]))
    assert rendering.error is None and rendering.config is not None
    service = rendering.config.cache.service
    assert service is not None
    assert (service.url, service.budget_ms, service.ttl_s) == (
        "http://basic-o1pool-cache.default.svc:8470",
        40,
        600,
    )
    policy, svc, deployment = cacheservice.get_manifests(pool, rendering.cache_service, "img:1")  # type: ignore[arg-type]
    assert [m["kind"] for m in (policy, svc, deployment)] == ["NetworkPolicy", "Service", "Deployment"]
    assert {m["metadata"]["name"] for m in (policy, svc, deployment)} == {"basic-o1pool-cache"}
    pod = deployment["spec"]["template"]["spec"]
    assert pod["volumes"] == [{"name": "data", "persistentVolumeClaim": {"claimName": "answers"}}]
    assert "--max-ttl-s=600" in pod["containers"][0]["args"]
    # The pool's own pods (labelled by the webhook) reach the entries; nobody else does.
    assert policy["spec"]["ingress"][0]["from"] == [{"podSelector": {"matchLabels": {POOL_LABEL: "basic"}}}]
    assert get_status(pool, rendering, NOW)["cacheService"] == "basic-o1pool-cache"


def test_a_semantic_cache_runs_the_service_with_it_in_the_cache_image() -> None:
    semantic = {"enabled": True, "threshold": 0.97, "maxEntries": 1000, "requests": "deterministic"}
    pool = pool_with({"cache": {"persistent": {"enabled": True}, "semantic": semantic}})
    rendering = render(pool, fake_secrets(pool["spec"]))
    assert rendering.error is None and rendering.config is not None
    service = rendering.config.cache.service
    assert service is not None and service.semantic is not None
    assert (service.semantic.requests, service.semantic.budget_ms) == ("deterministic", 60)
    persistent = rendering.cache_service
    assert persistent is not None
    images = cacheservice.Images(sidecar="sidecar:1", cache="cache:1")
    image = cacheservice.image_for(pool, persistent, images)
    assert image == "cache:1"
    deployment = cacheservice.get_manifests(pool, persistent, image)[2]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "cache:1"
    wanted = {"--semantic", "--semantic-threshold=0.97", "--semantic-max-entries=1000"}
    assert wanted <= set(container["args"])
    assert container["resources"] == cacheservice.SEMANTIC_RESOURCES
    # Without the semantic layer: the sidecar image (or the pool's own), no --semantic, smaller resources.
    pool = pool_with({"cache": {"persistent": {"enabled": True}}, "injection": {"image": "mine:2"}})
    persistent = render(pool, fake_secrets(pool["spec"])).cache_service
    assert persistent is not None and persistent.semantic is None
    assert cacheservice.image_for(pool, persistent, images) == "mine:2"
    deployment = cacheservice.get_deployment(pool, persistent, "mine:2")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert not any(arg.startswith("--semantic") for arg in container["args"])
    assert container["resources"] == cacheservice.DEFAULT_RESOURCES


def test_a_semantic_cache_without_the_cache_service_says_what_to_do() -> None:
    pool = pool_with({"cache": {"semantic": {"enabled": True}}})
    rendering = render(pool, fake_secrets(pool["spec"]))
    assert rendering.error is not None and rendering.error.reason == "InvalidConfig"
    assert "spec.cache.persistent.enabled: true" in rendering.error.message
    assert "spec.cache.semantic.enabled: false" in rendering.error.message


def test_without_a_persistent_cache_there_is_no_cache_service() -> None:
    for cache in (
        {},
        {"persistent": {"enabled": False}},
        {"enabled": False, "persistent": {"enabled": True}},
    ):
        pool = pool_with({"cache": cache})
        rendering = render(pool, fake_secrets(pool["spec"]))
        assert rendering.config is not None and rendering.config.cache.service is None
        assert rendering.cache_service is None
        assert get_status(pool, rendering, NOW)["cacheService"] is None  # (removes it: a merge patch)


def test_a_pool_name_too_long_for_a_cache_service_says_so() -> None:
    pool = pool_with({"cache": {"persistent": {"enabled": True}}})
    pool["metadata"]["name"] = "p" * 51
    rendering = render(pool, fake_secrets(pool["spec"]))
    assert rendering.error is not None and rendering.error.reason == "InvalidConfig"
    assert "at most 50 characters" in rendering.error.message
    assert "spec.cache.persistent off" in rendering.error.message
