"""Render an O1Pool into what its sidecars consume: the validated sidecar config and the pool's key Secret.

Pure functions of their inputs (the pool object and the data of the Secrets it references); no I/O.
Key values only ever travel from the referenced Secrets' ``data`` into the pool's key Secret ``data``,
still base64-encoded; the config names each key by a file path under the sidecar's key mount.
"""

from __future__ import annotations

import base64
import binascii
import fnmatch
import hashlib
import hmac
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import PurePosixPath
from secrets import token_urlsafe
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from o1operator import cacheservice
from o1operator.objects import object_metadata
from o1sidecar.config import Account, ConfigError, SidecarConfig

KEY_MOUNT = PurePosixPath("/etc/o1pool/keys")
CONFIG_MOUNT = PurePosixPath("/etc/o1pool/config")
CONFIG_FILE = "config.yaml"
REDIS_PASSWORD_FILE = "redis-password"
REDIS_CA_FILE = "redis-ca.crt"
DEFAULT_BASE_URL = str(Account.model_fields["base_url"].default)  # the sidecar's, for accounts without one
# A random value per pool, kept in the pool's key Secret: the key of the config hash's HMAC, so the
# hash (on pods, in status, from the webhook) cannot be used to check guesses of a key offline.
SALT_FILE = "config-hash-salt"


# Secret name -> that Secret's ``data`` exactly as the API returns it (values base64-encoded).
# A Secret that does not exist is simply absent.
SecretsData = Mapping[str, Mapping[str, str]]


class RenderError(Exception):
    """The pool cannot be rendered now. ``reason`` is CamelCase; ``message`` names the cause, no value."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class KeyState:
    """One key the spec references and whether the referenced Secret provides it."""

    account: str
    name: str
    secret: str
    secret_key: str
    problem: str | None = None
    """``None`` if usable; otherwise a CamelCase reason: SecretNotFound, SecretKeyNotFound, KeyEmpty."""

    @property
    def ready(self) -> bool:
        return self.problem is None

    @property
    def file_name(self) -> str:
        """Data key in the pool's Secret and file name under the key mount. Names are DNS labels, so the
        dot cannot be ambiguous."""
        return f"{self.account}.{self.name}"

    def describe_problem(self) -> str:
        where = f"account {self.account}, key {self.name}"
        if self.problem == "SecretNotFound":
            return f"Secret {self.secret!r} not found ({where})"
        if self.problem == "SecretKeyNotFound":
            return f"Secret {self.secret!r} has no key {self.secret_key!r} ({where})"
        return f"Secret {self.secret!r} key {self.secret_key!r} is empty ({where})"


@dataclass(frozen=True)
class Rendering:
    """Everything rendered from one pool. If it cannot serve, ``error`` is set and ``config_yaml`` is None."""

    name: str
    namespace: str
    keys: tuple[KeyState, ...]
    accounts_total: int
    accounts_ready: int
    config_yaml: str | None = None
    key_data: dict[str, str] = field(default_factory=dict)
    config_hash: str | None = None
    error: RenderError | None = None
    config: SidecarConfig | None = None  # the validated config that config_yaml is
    cache_service: cacheservice.Persistent | None = None  # the pool's cache service, if it has one

    @property
    def keys_ready(self) -> int:
        return sum(k.ready for k in self.keys)

    @property
    def config_map_name(self) -> str:
        return config_map_name(self.name)

    @property
    def secret_name(self) -> str:
        return key_secret_name(self.name)


def config_map_name(pool: str) -> str:
    return f"{pool}-o1pool-config"


def key_secret_name(pool: str) -> str:
    return f"{pool}-o1pool-keys"


def referenced_secrets(spec: Mapping[str, Any]) -> set[str]:
    """Names of every Secret the spec references (keys, Redis, and the gateway's virtual keys and TLS)."""
    names = {k["secretKeyRef"]["name"] for a in spec.get("accounts", []) for k in a.get("keys", [])}
    redis = spec.get("redis") or {}
    names |= {
        redis[ref]["name"] for ref in ("urlSecretRef", "passwordSecretRef", "caSecretRef") if ref in redis
    }
    names |= {k["secretRef"]["name"] for c in spec.get("clients") or [] for k in c.get("virtualKeys") or []}
    tls = (spec.get("gateway") or {}).get("tlsSecretName")
    if tls:
        names.add(tls)
    return names


def decode(value: str) -> str | None:
    """A Secret ``data`` value as text (``None``: not base64 of UTF-8)."""
    try:
        return base64.b64decode(value, validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None


def _encode(value: str) -> str:
    return base64.b64encode(value.encode()).decode()


def key_problem(ref: Mapping[str, str], secrets: SecretsData) -> str | None:
    """Why the Secret key ``ref`` (``name``, ``key``) gives no value: ``SecretNotFound``,
    ``SecretKeyNotFound``, ``KeyEmpty``; ``None`` if it holds one."""
    data = secrets.get(ref["name"])
    if data is None:
        return "SecretNotFound"
    if ref["key"] not in data:
        return "SecretKeyNotFound"
    if not (decode(data[ref["key"]]) or "").strip():
        return "KeyEmpty"
    return None


def get_key_states(spec: Mapping[str, Any], secrets: SecretsData) -> tuple[KeyState, ...]:
    return tuple(
        KeyState(account["name"], key["name"], ref["name"], ref["key"], key_problem(ref, secrets))
        for account in spec.get("accounts", [])
        for key in account.get("keys", [])
        for ref in [key["secretKeyRef"]]
    )


def _secret_value(ref: Mapping[str, str], secrets: SecretsData, field_path: str) -> str:
    data = secrets.get(ref["name"])
    if data is None:
        raise RenderError("RedisSecretNotFound", f"Secret {ref['name']!r} ({field_path}) not found")
    if ref["key"] not in data:
        raise RenderError(
            "RedisSecretNotFound", f"Secret {ref['name']!r} ({field_path}) has no key {ref['key']!r}"
        )
    value = (decode(data[ref["key"]]) or "").strip()
    if not value:
        raise RenderError("RedisSecretInvalid", f"Secret {ref['name']!r} key {ref['key']!r} is empty")
    return value


def _split_password(url: str) -> tuple[str, str | None]:
    """``url`` without its password (userinfo or ``password`` query value), and that password."""
    parts = urlsplit(url)
    password = unquote(parts.password) if parts.password is not None else None  # as redis-py reads it
    netloc = parts.netloc
    if password is not None:
        host = netloc.rpartition("@")[2]
        netloc = f"{parts.username}@{host}" if parts.username else host
    query = parse_qsl(parts.query, keep_blank_values=True)
    for k, v in query:
        if k == "password":
            password = v
    query = [(k, v) for k, v in query if k != "password"]
    rest = urlunsplit(("", "", parts.path, urlencode(query), parts.fragment))
    return f"{parts.scheme}://{netloc}{rest}", password  # "//" kept for unix:///path too


def get_redis_config(redis: Mapping[str, Any], secrets: SecretsData) -> tuple[dict[str, Any], dict[str, str]]:
    """The sidecar's ``redis`` section and the key-Secret entries it needs (the password, if any)."""
    if not redis or not (redis.get("url") or redis.get("urlSecretRef")):
        return {}, {}
    extra: dict[str, str] = {}
    password: str | None = None
    if "urlSecretRef" in redis:
        ref = redis["urlSecretRef"]
        raw = _secret_value(ref, secrets, "spec.redis.urlSecretRef")
        if urlsplit(raw).scheme not in {"redis", "rediss", "unix"}:
            raise RenderError(
                "RedisSecretInvalid",
                f"Secret {ref['name']!r} key {ref['key']!r} is not a redis://, rediss:// or unix:// URL",
            )
        url, password = _split_password(raw)
    else:
        url, inline = _split_password(redis["url"])
        if inline is not None:
            raise RenderError(
                "RedisURLHasPassword",
                "spec.redis.url must not contain a password: it would be copied into the ConfigMap; "
                "put the password in passwordSecretRef, or the whole URL in urlSecretRef",
            )
    if "passwordSecretRef" in redis:
        password = _secret_value(redis["passwordSecretRef"], secrets, "spec.redis.passwordSecretRef")
    if redis.get("tls") and url.startswith("redis://"):
        url = "rediss://" + url.removeprefix("redis://")
    if redis.get("cluster") and not url.startswith(("redis://", "rediss://")):
        raise RenderError(
            "RedisClusterURL",
            "spec.redis.cluster needs a redis:// or rediss:// URL of one of the cluster's nodes",
        )
    config: dict[str, Any] = {"url": url, **_pick(redis, _REDIS_FIELDS)}
    if redis.get("cluster"):  # (absent when false: a pool without it renders the config it did before)
        config["cluster"] = True
    if redis.get("keyPrefix"):
        config["key_prefix"] = redis["keyPrefix"]
    if password:
        extra[REDIS_PASSWORD_FILE] = _encode(password)
        config["password_file"] = str(KEY_MOUNT / REDIS_PASSWORD_FILE)
    if "caSecretRef" in redis:
        if not url.startswith("rediss://"):
            raise RenderError(
                "RedisCAWithoutTLS",
                "spec.redis.caSecretRef is only used over TLS: set spec.redis.tls: true or use a "
                "rediss:// URL",
            )
        ca = _secret_value(redis["caSecretRef"], secrets, "spec.redis.caSecretRef")
        extra[REDIS_CA_FILE] = _encode(ca + "\n")
        config["tls_ca_file"] = str(KEY_MOUNT / REDIS_CA_FILE)
    return config, extra


_MODEL_LIMITS = {
    "rpm": "rpm",
    "tpm": "tpm",
    "concurrency": "concurrency",
    "monthlyRequests": "monthly_requests",
    "dailyRequests": "daily_requests",
}
_ACCOUNT_FIELDS = {
    "kind": "kind",
    "baseURL": "base_url",
    "weight": "weight",
    "burstSeconds": "burst_s",
    "adaptiveLimits": "adaptive",
    "reserve": "reserve",
    "tier": "tier",
    "apiVersion": "api_version",
    "deployments": "deployments",
}
_QUEUE_FIELDS = {
    "defaultPriority": ("default_priority", 1),
    "maxLength": ("max_length", 1),
    "defaultDeadlineSeconds": ("default_deadline_ms", 1000),
    "maxDeadlineSeconds": ("max_deadline_ms", 1000),
    "agingSecondsPerLevel": ("aging_s_per_level", 1),
    "peakMinPriority": ("peak_min_priority", 1),
}
_CACHE_FIELDS = {
    "enabled": "enabled",
    "l1Entries": "l1_entries",
    "l2TTLSeconds": "l2_ttl_s",
    "onlyDeterministic": "only_deterministic",
    "ttlFollowsLoad": "ttl_follows_load",
}
_TOKEN_FIELDS = {"charge": "charge", "defaultMaxTokens": "default_max_tokens"}
_FALLBACK_FIELDS = {
    "chains": "chains",
    "cacheOnlyLast": "cache_only_last",
    "outageFailures": "outage_failures",
    "outageProbeSeconds": "outage_probe_s",
}
_TIMEOUT_FIELDS = {
    "connectSeconds": "connect_s",
    "readSeconds": "read_s",
    "totalSeconds": "total_s",
    "requestBodySeconds": "request_body_s",
    "requestHeadSeconds": "request_head_s",
}
_RETRY_FIELDS = {
    "maxAttempts": "max_attempts",
    "backoffBaseSeconds": "backoff_base_s",
    "maxRetryAfterSeconds": "max_retry_after_s",
}
_CONTEXT_FIELDS = {"windows": "windows", "onOverflow": "on_overflow"}
_SHUTDOWN_FIELDS = {"graceSeconds": "grace_s", "queueSeconds": "queue_s"}
_TRACING_FIELDS = {"otlpEndpoint": "otlp_endpoint", "sampleRatio": "sample_ratio"}
_AUDIT_FIELDS = {
    "enabled": "enabled",
    "sampleRatio": "sample_ratio",
    "content": "content",
    "maskPatterns": "mask_patterns",
}
_PRICE_FIELDS = {"input": "input", "cachedInput": "cached_input", "output": "output"}
_CLIENT_FIELDS = {"name": "name", "weight": "weight", "maxPriority": "max_priority", "onBudget": "on_budget"}
_CLIENT_MATCH_FIELDS = {
    "namespaces": "namespaces",
    "workloads": "workloads",
    "serviceAccounts": "service_accounts",
}
_BUDGET_FIELDS = {
    "dailyUsd": "daily_usd",
    "monthlyUsd": "monthly_usd",
    "dailyTokens": "daily_tokens",
    "monthlyTokens": "monthly_tokens",
}
_CLIENT_LIMITS_FIELDS = {"rpm": "rpm", "tpm": "tpm"}
_REDIS_FIELDS = {
    "connectTimeoutMs": "connect_timeout_ms",
    "opTimeoutMs": "op_timeout_ms",
    "heartbeatIntervalSeconds": "heartbeat_interval_s",
    "breakerFailures": "breaker_failures",
    "breakerResetSeconds": "breaker_reset_s",
}


def _pick(source: Mapping[str, Any] | None, names: Mapping[str, str]) -> dict[str, Any]:
    source = source or {}
    return {snake: source[camel] for camel, snake in names.items() if camel in source}


def get_account_config(account: Mapping[str, Any], keys: list[KeyState]) -> dict[str, Any]:
    config: dict[str, Any] = {"name": account["name"], **_pick(account, _ACCOUNT_FIELDS)}
    models = account.get("models") or {}
    if models:
        config["models"] = {model: _pick(limits, _MODEL_LIMITS) for model, limits in models.items()}
    config["keys"] = [{"name": k.name, "file": str(KEY_MOUNT / k.file_name)} for k in keys]
    return config


def is_gateway_only(client: Mapping[str, Any]) -> bool:
    """A client without ``match`` is no pod's, only its virtual keys' callers at the gateway: the
    sidecars' config leaves it out."""
    return "match" not in client


def get_client_config(client: Mapping[str, Any]) -> dict[str, Any]:
    """One of the sidecar config's ``clients``."""
    config = _pick(client, _CLIENT_FIELDS)
    if "match" in client:
        config["match"] = _pick(client["match"], _CLIENT_MATCH_FIELDS)
    if "limits" in client:
        config["limits"] = _pick(client["limits"], _CLIENT_LIMITS_FIELDS)
    if "budgets" in client:
        config["budgets"] = _pick(client["budgets"], _BUDGET_FIELDS)
    return config


def get_cache_config(pool: Mapping[str, Any]) -> dict[str, Any]:
    """The sidecar config's ``cache``; with ``spec.cache.persistent``, ``service`` names the pool's cache
    service (``ValueError`` if the pool's name cannot make one)."""
    cache = _pick(pool["spec"].get("cache"), _CACHE_FIELDS)
    persistent = cacheservice.get_persistent(pool["spec"])
    if persistent is not None:
        cache["service"] = cacheservice.get_sidecar_settings(pool, persistent)
    return cache


def get_sidecar_config(
    pool: Mapping[str, Any], keys: tuple[KeyState, ...], redis: dict[str, Any]
) -> dict[str, Any]:
    """The sidecar config (unvalidated dict) serving the accounts that have at least one usable key."""
    meta, spec = pool["metadata"], pool["spec"]
    injection = spec.get("injection") or {}
    accounts = []
    for account in spec["accounts"]:
        usable = [k for k in keys if k.account == account["name"] and k.ready]
        if usable:
            accounts.append(get_account_config(account, usable))
    queue = spec.get("queue") or {}
    config: dict[str, Any] = {
        "pool": {"name": meta["name"], "namespace": meta.get("namespace", "default")},
        "listen": {"host": "127.0.0.1", "port": injection.get("port", 8080)},
        "metrics": {"host": "0.0.0.0", "port": injection.get("metricsPort", 9090)},
        "accounts": accounts,
        "tokens": _pick(spec.get("tokens"), _TOKEN_FIELDS),
        "queue": {
            snake: queue[camel] * scale for camel, (snake, scale) in _QUEUE_FIELDS.items() if camel in queue
        },
        "cache": get_cache_config(pool),
        "fallback": _pick(spec.get("fallback"), _FALLBACK_FIELDS),
        "timeouts": _pick(spec.get("timeouts"), _TIMEOUT_FIELDS),
        "retry": _pick(spec.get("retry"), _RETRY_FIELDS),
        "context": _pick(spec.get("context"), _CONTEXT_FIELDS),
        "shutdown": _pick(spec.get("shutdown"), _SHUTDOWN_FIELDS),
        "tracing": _pick(spec.get("tracing"), _TRACING_FIELDS),
    }
    if "maxBodyBytes" in spec:
        config["max_body_bytes"] = spec["maxBodyBytes"]
    # Only when the pool sets them: the config of a pool without them stays what it was before them.
    if "audit" in spec:
        config["audit"] = _pick(spec["audit"], _AUDIT_FIELDS)
    if "prices" in spec:
        config["prices"] = {model: _pick(price, _PRICE_FIELDS) for model, price in spec["prices"].items()}
    clients = [get_client_config(c) for c in spec.get("clients") or [] if not is_gateway_only(c)]
    if clients:
        config["clients"] = clients
    if redis:
        config["redis"] = redis
    return config


def get_config_hash(config_yaml: str, key_data: Mapping[str, str]) -> str:
    """HMAC-SHA256, keyed by the pool's salt (``key_data[SALT_FILE]``), of the config and the key
    Secret's data: changes on any config change or key rotation, and says nothing about a key to
    whoever does not hold the salt."""
    salt = decode(key_data.get(SALT_FILE, "")) or ""
    digest = hmac.new(salt.encode(), config_yaml.encode(), hashlib.sha256)
    for name in sorted(key_data):
        if name != SALT_FILE:
            digest.update(b"\0" + name.encode() + b"\0" + key_data[name].encode())
    return digest.hexdigest()


def with_salt(
    secrets: SecretsData, pool_name: str, new_salt: Callable[[], str] = lambda: token_urlsafe(32)
) -> SecretsData:
    """``secrets`` with the pool's key Secret holding a salt: the one it has, or a new one."""
    own = key_secret_name(pool_name)
    data = secrets.get(own) or {}
    if decode(data.get(SALT_FILE, "")):
        return secrets
    return {**secrets, own: {**data, SALT_FILE: _encode(new_salt())}}


def check_upstreams(spec: Mapping[str, Any], allowed_hosts: Sequence[str]) -> None:
    """Every account's baseURL names a host matching one of ``allowed_hosts`` (shell patterns, e.g.
    ``*.openai.azure.com``): the sidecar sends the pool's keys there."""
    for i, account in enumerate(spec.get("accounts", [])):
        host = (urlsplit(account.get("baseURL") or DEFAULT_BASE_URL).hostname or "").lower()
        if not any(fnmatch.fnmatchcase(host, pattern) for pattern in allowed_hosts):
            raise RenderError(
                "UpstreamNotAllowed",
                f"spec.accounts[{i}].baseURL names host {host!r}, which this operator may not send keys to "
                f"(allowed: {', '.join(allowed_hosts)}); use an allowed host, or ask the cluster admin to "
                "add it (the chart's allowedUpstreamHosts, flag --allowed-upstream-hosts)",
            )


def render(
    pool: Mapping[str, Any], secrets: SecretsData, allowed_hosts: Sequence[str] | None = None
) -> Rendering:
    """Render ``pool`` given the data of the Secrets that exist, its accounts' upstreams limited to
    ``allowed_hosts`` (None: any). Never raises for a bad pool: the problem is returned in
    ``Rendering.error``."""
    meta, spec = pool["metadata"], pool["spec"]
    keys = get_key_states(spec, secrets)
    accounts = spec.get("accounts", [])
    ready_accounts = {k.account for k in keys if k.ready}
    base = Rendering(
        name=meta["name"],
        namespace=meta.get("namespace", "default"),
        keys=keys,
        accounts_total=len(accounts),
        accounts_ready=len(ready_accounts),
    )

    def failed(reason: str, message: str) -> Rendering:
        return replace(base, error=RenderError(reason, message))

    if not ready_accounts:
        problems = "; ".join(k.describe_problem() for k in keys if not k.ready)
        return failed("NoUsableKeys", f"no account has a usable key: {problems}")
    try:
        if allowed_hosts is not None:
            check_upstreams(spec, allowed_hosts)
        redis, extra = get_redis_config(spec.get("redis") or {}, secrets)
    except RenderError as exc:
        return failed(exc.reason, exc.message)
    try:
        raw = get_sidecar_config(pool, keys, redis)
        config = SidecarConfig.from_dict(raw, source=f"O1Pool {base.namespace}/{base.name}")
    except (ConfigError, ValueError) as exc:
        return failed("InvalidConfig", str(exc))
    config_yaml = config.to_yaml()
    salt = (secrets.get(key_secret_name(base.name)) or {}).get(SALT_FILE)
    key_data = {k.file_name: secrets[k.secret][k.secret_key] for k in keys if k.ready} | extra
    if salt:
        key_data[SALT_FILE] = salt
    config_hash = get_config_hash(config_yaml, key_data)
    return replace(
        base,
        config_yaml=config_yaml,
        key_data=key_data,
        config_hash=config_hash,
        config=config,
        cache_service=cacheservice.get_persistent(spec),
    )


def get_config_map(pool: Mapping[str, Any], rendering: Rendering) -> dict[str, Any]:
    assert rendering.config_yaml is not None and rendering.config_hash is not None
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": object_metadata(pool, rendering.config_map_name, "sidecar-config", rendering.config_hash),
        "data": {CONFIG_FILE: rendering.config_yaml},
    }


def get_key_secret(pool: Mapping[str, Any], rendering: Rendering) -> dict[str, Any]:
    assert rendering.config_hash is not None
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": object_metadata(pool, rendering.secret_name, "sidecar-keys", rendering.config_hash),
        "type": "Opaque",
        "data": dict(sorted(rendering.key_data.items())),
    }


def redact_secret(secret: Mapping[str, Any]) -> dict[str, Any]:
    """The Secret manifest with every value replaced, for golden files and diagnostics."""
    return {**secret, "data": dict.fromkeys(secret.get("data", {}), "<redacted>")}
