"""The pool's gateway (spec.gateway, gateway.py): its config, ConfigMap, Deployment and Service, the
hash that rolls it, what a missing virtual key or TLS Secret does, and its status. Pure."""

from __future__ import annotations

import base64
import copy
import hashlib
import logging
from datetime import UTC, datetime
from pathlib import PurePosixPath
from typing import Any

import pytest
import yaml

from o1operator import cacheservice, gateway
from o1operator.reconcile import apply_gateway, get_events, reconcile_pool
from o1operator.render import SALT_FILE, key_secret_name, referenced_secrets, render, with_salt
from o1operator.status import get_status
from o1sidecar.clients import Clients
from o1sidecar.config import SidecarConfig
from o1sidecar.identity import Identity
from tests.operator.conftest import (
    REPO,
    b64,
    fake_secrets,
    fake_virtual_key,
    load_example,
    secret_values,
)

EXAMPLE = REPO / "examples" / "o1pool-gateway.yaml"
NOW = datetime(2026, 12, 7, tzinfo=UTC)
IMAGES = cacheservice.Images(sidecar="o1pool-sidecar:test", cache="o1pool-cache:test")


def salted(pool: dict[str, Any], secrets: dict[str, dict[str, str]] | None = None) -> dict[str, Any]:
    data = fake_secrets(pool["spec"]) if secrets is None else secrets
    return dict(with_salt(data, pool["metadata"]["name"], lambda: "test-salt"))


def rendered(
    pool: dict[str, Any], secrets: dict[str, Any] | None = None
) -> tuple[Any, gateway.GatewayRendering | None]:
    data = salted(pool, secrets)
    rendering = render(pool, data)
    assert rendering.error is None, rendering.error
    return rendering, gateway.render_gateway(pool, rendering, data)


def ok(pool: dict[str, Any], secrets: dict[str, Any] | None = None) -> gateway.GatewayRendering:
    _, found = rendered(pool, secrets)
    assert found is not None and found.error is None, found and found.error
    return found


def manifests(pool: dict[str, Any], found: gateway.GatewayRendering) -> dict[str, dict[str, Any]]:
    return {m["kind"]: m for m in gateway.get_manifests(pool, found, "o1pool-sidecar:test")}


def without_gateway(pool: dict[str, Any]) -> dict[str, Any]:
    """The pool as it was before its gateway: no virtual keys, and no client only a gateway serves."""
    bare = copy.deepcopy(pool)
    del bare["spec"]["gateway"]
    bare["spec"]["clients"] = [c for c in bare["spec"]["clients"] if "match" in c]
    for client in bare["spec"]["clients"]:
        del client["virtualKeys"]
    return bare


def test_a_client_with_virtual_keys_and_no_match_is_in_the_gateways_config_only() -> None:
    pool = load_example(EXAMPLE)
    rendering, found = rendered(pool)
    assert found is not None and found.config is not None
    sidecars = SidecarConfig.from_dict(yaml.safe_load(rendering.config_yaml or ""))
    assert [c.name for c in sidecars.clients] == ["batch"]  # partner would otherwise be every pod
    assert [(c.name, c.weight) for c in found.config.clients] == [("batch", 1.0), ("partner", 0.5)]
    assert Clients(sidecars, Identity("elsewhere", "p", "default", "Deployment/x")).own is None


def test_the_gateway_config_serves_every_address_with_virtual_key_files_and_tls_where_they_are_mounted() -> (
    None
):
    pool = load_example(EXAMPLE)
    found = ok(pool)
    assert found.config_yaml is not None
    config = SidecarConfig.from_dict(yaml.safe_load(found.config_yaml))
    assert (config.listen.host, config.listen.port) == ("0.0.0.0", 8443)
    assert (config.metrics.host, config.metrics.port) == ("0.0.0.0", 9090)
    assert config.gateway.enabled
    assert str(config.gateway.tls_cert_file) == "/etc/o1pool/tls/tls.crt"
    assert str(config.gateway.tls_key_file) == "/etc/o1pool/tls/tls.key"
    files = {c.name: [str(k.file) for k in c.virtual_keys] for c in config.clients}
    assert files == {
        "batch": ["/etc/o1pool/virtual-keys/batch.main"],
        "partner": ["/etc/o1pool/virtual-keys/partner.current"],
    }
    # ...exactly where the Deployment mounts them: each file is an item of the projected volume.
    spec = manifests(pool, found)["Deployment"]["spec"]["template"]["spec"]
    [container] = spec["containers"]
    mounts = {m["name"]: PurePosixPath(m["mountPath"]) for m in container["volumeMounts"]}
    assert all(m["readOnly"] for m in container["volumeMounts"])
    volumes = {v["name"]: v for v in spec["volumes"]}
    projected = {
        str(mounts["virtual-keys"] / item["path"]): (source["secret"]["name"], item["key"])
        for source in volumes["virtual-keys"]["projected"]["sources"]
        for item in source["secret"]["items"]
    }
    assert projected == {
        "/etc/o1pool/virtual-keys/batch.main": ("batch-key", "key"),
        "/etc/o1pool/virtual-keys/partner.current": ("partner-key", "key"),
    }
    tls = volumes["tls"]["secret"]
    assert tls["secretName"] == "shared-gateway-tls"
    assert {str(mounts["tls"] / i["path"]) for i in tls["items"]} == {
        str(config.gateway.tls_cert_file),
        str(config.gateway.tls_key_file),
    }
    # The upstream keys and the Redis password, as the sidecars mount them.
    assert volumes["keys"]["secret"]["secretName"] == key_secret_name("shared")
    assert str(mounts["keys"]) == "/etc/o1pool/keys"
    assert config.redis.password_file is not None
    assert str(config.redis.password_file).startswith("/etc/o1pool/keys/")
    assert str(mounts["config"] / "config.yaml") == container["args"][1]
    assert volumes["config"]["configMap"]["name"] == "shared-gateway-config"


def test_the_gateway_binary_reads_its_virtual_keys_as_rendered(tmp_path: Any) -> None:
    """The files the config names, holding what the Secrets hold (digests), let the callers' keys in."""
    pool = load_example(EXAMPLE)
    secrets = fake_secrets(pool["spec"])
    found = ok(pool, secrets)
    assert found.config is not None
    data = yaml.safe_load(found.config_yaml or "")
    for client in data["clients"]:
        for ref in client["virtual_keys"]:
            key = next(k for k in found.keys if f"{k.client}.{k.name}" == PurePosixPath(ref["file"]).name)
            path = tmp_path / PurePosixPath(ref["file"]).name
            path.write_bytes(base64.b64decode(secrets[key.secret][key.secret_key]))
            ref["file"] = str(path)
    data["gateway"] = {"enabled": True}  # (no TLS files here)
    clients = Clients(SidecarConfig.from_dict(data), Identity())
    caller = clients.of_request("Bearer " + fake_virtual_key("partner-key", "key"))
    assert caller is not None and caller.name == "partner"


def test_the_sidecars_config_does_not_change_when_a_gateway_is_added() -> None:
    pool = load_example(EXAMPLE)
    bare = without_gateway(pool)
    with_gateway_rendering, found = rendered(pool)
    bare_rendering, none = rendered(bare, salted(pool))
    assert found is not None and none is None
    assert with_gateway_rendering.config_yaml == bare_rendering.config_yaml
    assert with_gateway_rendering.config_hash == bare_rendering.config_hash
    assert with_gateway_rendering.key_data == bare_rendering.key_data
    assert [
        c for c in yaml.safe_load(with_gateway_rendering.config_yaml or "")["clients"] if c["virtual_keys"]
    ] == []
    sidecars = SidecarConfig.from_dict(yaml.safe_load(with_gateway_rendering.config_yaml or ""))
    assert not sidecars.gateway.enabled and all(not c.virtual_keys for c in sidecars.clients)


def test_no_secret_value_in_the_gateways_config_map_service_or_deployment() -> None:
    pool = load_example(EXAMPLE)
    secrets = fake_secrets(pool["spec"])
    found = ok(pool, secrets)
    visible = yaml.safe_dump_all(list(manifests(pool, found).values()))
    leaks = [v[:16] for v in secret_values(secrets) if v in visible]
    assert leaks == []
    assert fake_virtual_key("batch-key", "key") not in visible


def test_the_pod_template_hash_follows_virtual_keys_tls_and_the_redis_password_not_upstream_keys() -> None:
    pool = load_example(EXAMPLE)
    secrets = salted(pool)
    first = ok(pool, secrets)
    template = manifests(pool, first)["Deployment"]["spec"]["template"]["metadata"]["annotations"]
    assert template["o1pool.io/config-hash"] == first.config_hash
    assert manifests(pool, first)["ConfigMap"]["metadata"]["annotations"]["o1pool.io/config-hash"] == (
        first.config_hash
    )

    def changed(secret: str, key: str, value: str) -> str | None:
        data = copy.deepcopy(secrets)
        data[secret][key] = b64(value)
        return ok(pool, data).config_hash

    digest = "sha256:" + hashlib.sha256(b"sk-o1p-rotated").hexdigest()
    assert changed("batch-key", "key", digest) != first.config_hash
    assert changed("batch-key", "key", "sk-o1p-a-key-held-as-is") != first.config_hash
    assert changed("shared-gateway-tls", "tls.key", "another key") != first.config_hash
    assert changed("shared-gateway-tls", "tls.crt", "another chain") != first.config_hash
    assert changed("o1pool-redis", "password", "new-pa55word") != first.config_hash
    # An upstream key is read again in place by a running gateway: no roll.
    assert changed("openai-keys", "primary", "sk-rotated") == first.config_hash
    # The hash is an HMAC under the pool's salt, as the sidecars' config hash.
    other_salt = copy.deepcopy(secrets)
    other_salt[key_secret_name("shared")][SALT_FILE] = b64("another-salt")
    assert ok(pool, other_salt).config_hash != first.config_hash


def test_a_missing_virtual_key_is_left_out_and_named_and_the_gateway_serves_the_others() -> None:
    pool = load_example(EXAMPLE)
    secrets = salted(pool)
    del secrets["partner-key"]
    rendering, found = rendered(pool, secrets)
    assert found is not None and found.error is None
    assert found.problems == ["Secret 'partner-key' not found (client partner, virtual key current)"]
    config = SidecarConfig.from_dict(yaml.safe_load(found.config_yaml or ""))
    assert {c.name: len(c.virtual_keys) for c in config.clients} == {"batch": 1}  # (partner: no caller here)
    volumes = manifests(pool, found)["Deployment"]["spec"]["template"]["spec"]["volumes"]
    [projected] = [v for v in volumes if v["name"] == "virtual-keys"]
    assert [s["secret"]["name"] for s in projected["projected"]["sources"]] == ["batch-key"]

    status = get_status(pool, rendering, NOW, gateway=found)
    conditions = {c["type"]: c for c in status["conditions"]}
    ready, rendered_condition = conditions["Ready"], conditions["GatewayRendered"]
    assert (ready["status"], ready["reason"]) == ("True", "DegradedVirtualKeys")
    assert "Secret 'partner-key' not found (client partner, virtual key current)" in ready["message"]
    assert (rendered_condition["status"], rendered_condition["reason"]) == ("True", "DegradedVirtualKeys")
    assert "1 of 2 virtual keys" in rendered_condition["message"]
    assert status["gateway"] == "shared-gateway"
    events = get_events({}, status)
    assert ("Warning", "DegradedVirtualKeys") in [(t, r) for t, r, _ in events]


@pytest.mark.parametrize(
    ("value", "problem", "message"),
    [
        (None, "SecretKeyNotFound", "Secret 'batch-key' has no key 'key' (client batch, virtual key main)"),
        ("  \n", "KeyEmpty", "Secret 'batch-key' key 'key' is empty (client batch, virtual key main)"),
        ("sha256:ABC", "DigestInvalid", "starts with sha256: but is not sha256: and 64 lowercase hex digits"),
    ],
)
def test_each_unusable_virtual_key_says_why(value: str | None, problem: str, message: str) -> None:
    pool = load_example(EXAMPLE)
    secrets = salted(pool)
    secrets["batch-key"] = {"other": b64("x")} if value is None else {"key": b64(value)}
    found = ok(pool, secrets)
    [bad] = [k for k in found.keys if not k.ready]
    assert bad.problem == problem and message in bad.describe_problem()


def test_no_usable_virtual_key_renders_no_gateway_and_ready_says_which_are_missing() -> None:
    pool = load_example(EXAMPLE)
    pool["status"] = {"gateway": "shared-gateway"}  # (rendered before)
    secrets = salted(pool)
    del secrets["batch-key"], secrets["partner-key"]
    rendering, found = rendered(pool, secrets)
    assert found is not None and found.error is not None and found.config_yaml is None
    assert found.error.reason == "NoUsableVirtualKeys"
    status = get_status(pool, rendering, NOW, gateway=found)
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "NoUsableVirtualKeys")
    assert "Secret 'batch-key' not found (client batch, virtual key main)" in ready["message"]
    assert "Secret 'partner-key' not found (client partner, virtual key current)" in ready["message"]
    assert status["configHash"] == rendering.config_hash  # the sidecars are served all the same
    assert "gateway" not in status  # (what runs keeps its name, so turning it off still deletes it)
    kube = RecordingKube()
    apply_gateway(kube, pool, found, IMAGES)
    assert kube.calls == []  # nothing with a broken reference, nothing deleted


@pytest.mark.parametrize(
    ("secret", "reason", "message"),
    [
        (
            None,
            "GatewayTLSSecretNotFound",
            "Secret 'shared-gateway-tls' (spec.gateway.tlsSecretName) not found",
        ),
        ({"tls.crt": b64("chain")}, "GatewayTLSSecretInvalid", "has no (or an empty) tls.key"),
    ],
)
def test_a_missing_or_incomplete_tls_secret_renders_no_gateway(
    secret: dict[str, str] | None, reason: str, message: str
) -> None:
    pool = load_example(EXAMPLE)
    secrets = salted(pool)
    if secret is None:
        del secrets["shared-gateway-tls"]
    else:
        secrets["shared-gateway-tls"] = secret
    rendering, found = rendered(pool, secrets)
    assert found is not None and found.error is not None
    assert found.error.reason == reason and message in found.error.message
    assert "kubectl create secret tls shared-gateway-tls" in found.error.message
    status = get_status(pool, rendering, NOW, gateway=found)
    conditions = {c["type"]: c for c in status["conditions"]}
    assert (conditions["GatewayRendered"]["status"], conditions["Ready"]["reason"]) == ("False", reason)


def test_plain_http_explicit_port_service_type_replicas_and_the_pools_injection_settings() -> None:
    pool = load_example(EXAMPLE)
    del pool["spec"]["gateway"]["tlsSecretName"]
    pool["spec"]["gateway"] |= {"replicas": 3, "serviceType": "LoadBalancer"}
    pool["spec"]["injection"] = {"image": "registry.example/sidecar:1", "imagePullPolicy": "Always"}
    pool["spec"]["injection"]["logLevel"] = "DEBUG"
    found = ok(pool)
    config = SidecarConfig.from_dict(yaml.safe_load(found.config_yaml or ""))
    assert config.listen.port == 8080 and config.gateway.tls_cert_file is None
    made = manifests(pool, found)
    service = made["Service"]["spec"]
    assert service["type"] == "LoadBalancer"
    assert service["ports"] == [{"name": "http", "port": 8080, "targetPort": "http", "protocol": "TCP"}]
    deployment = made["Deployment"]["spec"]
    assert deployment["replicas"] == 3
    [container] = deployment["template"]["spec"]["containers"]
    assert [p["name"] for p in container["ports"]] == ["http", "o1pool-metrics"]
    assert "tls" not in {v["name"] for v in deployment["template"]["spec"]["volumes"]}
    assert gateway.image_for(pool, IMAGES) == "registry.example/sidecar:1"
    assert gateway.image_for(load_example(EXAMPLE), IMAGES) == "o1pool-sidecar:test"
    assert container["imagePullPolicy"] == "Always" and container["args"][-2:] == ["--log-level", "DEBUG"]
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": 9090}
    assert container["securityContext"]["readOnlyRootFilesystem"] and not container.get("env")
    assert deployment["template"]["spec"]["automountServiceAccountToken"] is False

    pool["spec"]["gateway"]["port"] = 9443
    found = ok(pool)
    assert SidecarConfig.from_dict(yaml.safe_load(found.config_yaml or "")).listen.port == 9443
    assert manifests(pool, found)["Service"]["spec"]["ports"][0]["port"] == 9443


def test_the_gateway_pods_carry_what_the_charts_pod_monitor_and_network_policy_select() -> None:
    pool = load_example(EXAMPLE)
    template = manifests(pool, ok(pool))["Deployment"]["spec"]["template"]
    assert template["metadata"]["labels"]["o1pool.io/pool"] == "shared"  # PodMonitor: o1pool.io/pool exists
    assert template["metadata"]["labels"]["app.kubernetes.io/component"] == "gateway"  # NetworkPolicy
    assert template["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "o1pool-operator"
    [container] = template["spec"]["containers"]
    assert {"name": "o1pool-metrics", "containerPort": 9090, "protocol": "TCP"} in container["ports"]
    grace = template["spec"]["terminationGracePeriodSeconds"]
    assert grace > SidecarConfig.from_dict(yaml.safe_load(ok(pool).config_yaml or "")).shutdown.grace_s


def test_a_pool_name_that_makes_no_service_name_renders_no_gateway() -> None:
    pool = load_example(EXAMPLE)
    pool["metadata"]["name"] = "p" * 56
    _, found = rendered(pool)
    assert found is not None and found.error is not None
    assert found.error.reason == "GatewayInvalidConfig"
    assert "at most 55 characters" in found.error.message


def test_the_gateways_secrets_are_referenced_so_their_events_re_render_the_pool() -> None:
    pool = load_example(EXAMPLE)
    assert referenced_secrets(pool["spec"]) == {
        "openai-keys",
        "o1pool-redis",
        "batch-key",
        "partner-key",
        "shared-gateway-tls",
    }


def test_a_pool_without_a_gateway_renders_none_and_drops_a_former_gateways_condition() -> None:
    pool = without_gateway(load_example(EXAMPLE))
    rendering, found = rendered(pool)
    assert found is None
    former = {
        "type": "GatewayRendered",
        "status": "True",
        "reason": "Rendered",
        "message": "",
        "observedGeneration": 1,
    }
    pool["status"] = {"gateway": "shared-gateway", "conditions": [former]}
    status = get_status(pool, rendering, NOW, gateway=None)
    assert status["gateway"] is None
    assert "GatewayRendered" not in {c["type"] for c in status["conditions"]}


class RecordingKube:
    """The Kube calls reconcile makes, recorded (reads answer from ``secrets``)."""

    def __init__(self, secrets: dict[str, dict[str, str]] | None = None) -> None:
        self.secrets = secrets or {}
        self.calls: list[tuple[str, str, str]] = []
        self.applied: list[dict[str, Any]] = []
        self.status: dict[str, Any] = {}

    def read_secrets(self, namespace: str, names: Any) -> dict[str, dict[str, str]]:
        return {n: self.secrets[n] for n in names if n in self.secrets}

    def apply(self, manifest: dict[str, Any]) -> None:
        self.calls.append(("apply", manifest["kind"], manifest["metadata"]["name"]))
        self.applied.append(manifest)

    def delete(self, kind: str, namespace: str, name: str) -> None:
        self.calls.append(("delete", kind, name))

    def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        self.status = status


def test_reconcile_applies_the_gateway_and_deletes_it_once_turned_off() -> None:
    pool = load_example(EXAMPLE)
    kube = RecordingKube(salted(pool))
    status = reconcile_pool(kube, pool, lambda *_: None, logging.getLogger("test"), images=IMAGES)  # type: ignore[arg-type]
    gateway_calls = [c for c in kube.calls if "gateway" in c[2]]
    assert gateway_calls == [
        ("apply", "ConfigMap", "shared-gateway-config"),
        ("apply", "Service", "shared-gateway"),
        ("apply", "Deployment", "shared-gateway"),
    ]
    [deployment] = [m for m in kube.applied if m["kind"] == "Deployment"]
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == "o1pool-sidecar:test"
    assert status["gateway"] == "shared-gateway"
    assert {c["type"]: c["status"] for c in status["conditions"]}["GatewayRendered"] == "True"

    off = copy.deepcopy(pool)
    off["spec"]["gateway"]["enabled"] = False
    for client in off["spec"]["clients"]:
        del client["virtualKeys"]
    off["status"] = status
    kube.calls.clear()
    status = reconcile_pool(kube, off, lambda *_: None, logging.getLogger("test"), images=IMAGES)  # type: ignore[arg-type]
    assert [c for c in kube.calls if c[0] == "delete"] == [
        ("delete", "Deployment", "shared-gateway"),
        ("delete", "Service", "shared-gateway"),
        ("delete", "ConfigMap", "shared-gateway-config"),
    ]
    assert status["gateway"] is None
    # Once gone (the status says so), nothing more is deleted.
    off["status"] = status
    kube.calls.clear()
    reconcile_pool(kube, off, lambda *_: None, logging.getLogger("test"), images=IMAGES)  # type: ignore[arg-type]
    assert [c for c in kube.calls if c[0] == "delete"] == []
