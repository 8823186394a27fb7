"""The sidecar's configuration: the versioned contract between the operator (which renders it from an
O1Pool) and the sidecar (which serves from it).

Everything here is data and validation only. API keys are never part of the config: each key is a
reference to a file (a mounted Secret) or an environment variable, read into process memory at start.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Literal, Self
from urllib.parse import parse_qsl, urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from o1common.configfiles import format_validation_error, read_yaml_mapping
from o1common.models import CONTEXT_WINDOWS
from o1common.tiers import TIER_PRESETS, tier_limits
from o1sidecar.prices import Price, PriceTable

CONFIG_VERSION: Literal["o1pool.io/sidecar/v1alpha1"] = "o1pool.io/sidecar/v1alpha1"

Name = Annotated[str, Field(pattern=r"^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$")]


class ConfigError(ValueError):
    """A config file that cannot be used; the message names the file, the field and the fix."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class KeyRef(_Strict):
    """Where one API key lives. Exactly one of ``file`` (a mounted Secret) or ``env``."""

    name: Name = Field(description="Key name used in metrics and logs; never the key itself.")
    file: Path | None = None
    env: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> Self:
        if (self.file is None) == (self.env is None):
            raise ValueError(f"key {self.name!r}: set exactly one of 'file' or 'env'")
        return self

    def read(self) -> str:
        """The key's value, read now. Errors name the source, never the value."""
        if self.env is not None:
            value = os.environ.get(self.env, "")
            if not value:
                raise ConfigError(f"key {self.name!r}: environment variable {self.env} is unset or empty")
            return value.strip()
        assert self.file is not None
        try:
            value = self.file.read_text().strip()
        except OSError as exc:
            raise ConfigError(f"key {self.name!r}: cannot read {self.file}: {exc.strerror}") from None
        if not value:
            raise ConfigError(f"key {self.name!r}: {self.file} is empty")
        return value


class ModelLimits(_Strict):
    """Per-model overrides of an account's tier preset. Unset fields come from the tier."""

    rpm: int | None = Field(default=None, gt=0)
    tpm: int | None = Field(default=None, gt=0)
    concurrency: int | None = Field(default=None, gt=0)
    monthly_requests: int | None = Field(default=None, gt=0)
    daily_requests: int | None = Field(default=None, gt=0)


class ResolvedLimits(_Strict):
    """The limits that apply to one account and model after tier presets and overrides."""

    rpm: int
    tpm: int
    concurrency: int | None = None
    monthly_requests: int | None = None
    daily_requests: int | None = None


class Account(_Strict):
    """One provider account (organisation/project). Its keys share the account's limits."""

    name: Name
    kind: Literal["openai", "azure", "relay"] = "openai"
    base_url: str = Field(default="https://api.openai.com/v1", pattern=r"^https?://")
    weight: float = Field(default=1.0, gt=0)
    burst_s: float = Field(
        default=1.0,
        gt=0,
        le=60,
        description="Pacing: at most this many seconds' worth of quota goes out at once or within any "
        "span of this many seconds (60: a minute).",
    )
    adaptive: bool = Field(
        default=True,
        description="Treat the configured limits as a guess: start at half of them for the first minute "
        "unless the upstream's limit headers say the limit (slow start), lower them when the upstream "
        "refuses what they allowed, raise them back while calls succeed.",
    )
    reserve: bool = Field(
        default=False,
        description="Take traffic only while the operator predicts a high load for the hour under way "
        "(needs redis.url and a published prediction); idle otherwise.",
    )
    tier: int | None = Field(default=None, ge=1, le=5)
    api_version: str | None = Field(default=None, description="Azure OpenAI api-version query value.")
    deployments: dict[str, str] = Field(default_factory=dict, description="Azure: model -> deployment.")
    models: dict[str, ModelLimits] = Field(default_factory=dict)
    keys: list[KeyRef] = Field(min_length=1)

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.kind == "azure" and not self.api_version:
            raise ValueError(f"account {self.name!r}: kind azure needs 'api_version'")
        names = [k.name for k in self.keys]
        if len(set(names)) != len(names):
            raise ValueError(f"account {self.name!r}: key names must be unique")
        for model in self.models:
            if self.limits_for(model) is None:
                raise ValueError(
                    f"account {self.name!r}, model {model!r}: no rpm/tpm from tier {self.tier}; "
                    "set both 'rpm' and 'tpm' or a tier that includes this model"
                )
        return self

    def limits_for(self, model: str) -> ResolvedLimits | None:
        """Tier preset overlaid with this account's overrides; ``None`` if the account cannot serve it."""
        preset = tier_limits(self.tier, model) if self.tier else None
        override = self.models.get(model)
        if preset is None and override is None:
            return None
        merged: dict[str, int | None] = {} if preset is None else dict(vars(preset))
        if override is not None:
            merged.update({k: v for k, v in override.model_dump().items() if v is not None})
        if merged.get("rpm") is None or merged.get("tpm") is None:
            return None
        return ResolvedLimits.model_validate(merged)

    def serves(self) -> list[str]:
        """Models this account can serve, in a stable order."""
        names = set(self.models) | set(TIER_PRESETS.get(self.tier or 0, {}))
        return sorted(m for m in names if self.limits_for(m) is not None)


class RedisConfig(_Strict):
    url: str | None = Field(
        default=None,
        pattern=r"^(redis|rediss|unix)://",
        description="Shared limiter. Unset: this sidecar limits alone, on a local limiter.",
    )
    password_file: Path | None = None
    password_env: str | None = None
    tls_ca_file: Path | None = Field(
        default=None,
        description="PEM CA bundle that signs the Redis server's certificate (rediss:// only); unset: the "
        "system's CAs.",
    )
    cluster: bool = Field(
        default=False,
        description="The url names one node of a Redis Cluster (any one: the others are discovered). A "
        "pool's keys share one hash slot, so each pool lives on one primary; pools spread over them.",
    )
    key_prefix: Name = "o1pool"
    connect_timeout_ms: int = Field(default=250, gt=0)
    op_timeout_ms: int = Field(default=250, gt=0)
    heartbeat_interval_s: float = Field(default=2.0, gt=0)
    breaker_failures: int = Field(default=3, ge=1, description="Consecutive failures that open the breaker.")
    breaker_reset_s: float = Field(default=2.0, gt=0, description="How long the breaker stays open.")

    @property
    def live_for_s(self) -> float:
        """A sidecar counts as live (for fair shares, and the O1Pool's liveSidecars) this long after
        its last heartbeat: three heartbeat intervals."""
        return 3 * self.heartbeat_interval_s

    @model_validator(mode="after")
    def _ca_needs_tls(self) -> RedisConfig:
        if self.tls_ca_file is not None and not (self.url or "").startswith("rediss://"):
            raise ValueError(
                "redis.tls_ca_file is only used with a rediss:// url; use rediss:// or remove it"
            )
        return self

    @model_validator(mode="after")
    def _cluster_over_tcp(self) -> RedisConfig:
        if not self.cluster:
            return self
        if self.url is None:
            raise ValueError("redis.cluster needs redis.url: a redis:// or rediss:// url of one node")
        parts = urlsplit(self.url)
        if parts.scheme == "unix":
            raise ValueError(
                "redis.cluster needs a redis:// or rediss:// url of one node (a cluster has no unix sockets)"
            )
        db = [v for k, v in parse_qsl(parts.query) if k == "db"] or [parts.path.strip("/") or "0"]
        if db[-1] != "0":
            raise ValueError("redis.cluster has database 0 only: drop the database from redis.url, or use /0")
        return self


class TokenPolicy(_Strict):
    """How the upstream charges TPM at admission; the sidecar mirrors it exactly."""

    charge: Literal["max", "sum"] = Field(
        default="max",
        description="max: larger of max_tokens and the prompt estimate; sum: prompt + max_tokens.",
    )
    default_max_tokens: int = Field(default=4096, gt=0, description="Assumed when a request sets none.")


class QueuePolicy(_Strict):
    default_priority: int = Field(default=5, ge=0, le=9)
    max_length: int = Field(default=10_000, gt=0, description="Waiting requests per sidecar.")
    default_deadline_ms: int = Field(default=120_000, gt=0)
    max_deadline_ms: int = Field(default=600_000, gt=0)
    aging_s_per_level: float = Field(default=30.0, gt=0, description="Wait that raises priority by one.")
    peak_min_priority: int = Field(
        default=7,
        ge=0,
        le=9,
        description="The protected priority: under a predicted peak, lower ones start at their fallback "
        "model; when the last model of a chain is down, it and higher ones wait for it.",
    )


class SemanticConfig(_Strict):
    """The semantic layer (L4) of the pool's cache service: an answer to a question asked in other
    words, in the same setting (model, system prompt, earlier turns, tools, parameters)."""

    requests: Literal["opt_in", "deterministic", "all"] = Field(
        default="opt_in",
        description="Which requests use it: opt_in (those sending x-o1pool-cache-semantic: on), "
        "deterministic (also those with temperature 0 or a seed), all (unless they send off).",
    )
    budget_ms: int = Field(
        default=60, gt=0, le=5_000, description="Longest a semantic lookup may take; a slower one is a miss."
    )


class CacheServiceConfig(_Strict):
    """The pool's cache service (``o1pool cache-service``): the persistent layer, L3, after an L2 miss."""

    url: str = Field(
        pattern=r"^https?://[^\s/]+(/\S*)?$",
        description="Base URL of the pool's cache service, e.g. http://o1pool-cache-mypool.team.svc:8470.",
    )
    budget_ms: int = Field(
        default=30, gt=0, le=5_000, description="Longest an L3 lookup may take; a slower one is a miss."
    )
    ttl_s: int = Field(
        default=604_800, gt=0, description="Lifetime of an L3 entry (the service may cap it lower)."
    )
    semantic: SemanticConfig | None = Field(
        default=None, description="The service's semantic layer (L4; it runs with --semantic). Unset: none."
    )


class CachePolicy(_Strict):
    enabled: bool = True
    l1_entries: int = Field(default=1000, ge=0)
    l2_ttl_s: int = Field(default=86_400, ge=0)
    only_deterministic: bool = Field(
        default=False, description="Cache only requests with temperature 0 or a seed."
    )
    ttl_follows_load: bool = Field(
        default=False,
        description="While the operator publishes a prediction for the hour under way, new cache entries "
        "live for its cacheTTLSeconds (1800/3600/7200 s at low/medium/high load) instead of l2_ttl_s.",
    )
    service: CacheServiceConfig | None = Field(
        default=None, description="The pool's cache service (L3); without it, L1 and L2 only."
    )


class FallbackPolicy(_Strict):
    chains: dict[str, list[str]] = Field(
        default_factory=dict, description="model -> models to try next, in order."
    )
    cache_only_last: bool = Field(default=True, description="After the chain, answer from cache if any.")
    outage_failures: int = Field(
        default=5, ge=1, description="Upstream failures in a row (any account) that mark a model down."
    )
    outage_probe_s: float = Field(
        default=30.0,
        gt=0,
        description="While a model is down, one request (for the pool, with Redis) probes it this often.",
    )


class Timeouts(_Strict):
    connect_s: float = Field(default=10.0, gt=0)
    read_s: float = Field(default=60.0, gt=0)
    total_s: float = Field(default=120.0, gt=0)
    request_body_s: float = Field(
        default=30.0, gt=0, description="The app's request body must arrive within this (else 408)."
    )
    request_head_s: float = Field(
        default=60.0,
        gt=0,
        description="A connection must bring a whole request head within this of opening or of its last "
        "answer, else it is closed (slow or idle clients do not hold connections).",
    )


class ContextPolicy(_Strict):
    windows: dict[str, int] = Field(
        default_factory=dict,
        description="model -> context window in tokens, added to or replacing the published ones.",
    )
    on_overflow: Literal["truncate", "refuse", "send"] = Field(
        default="truncate",
        description="A prompt that cannot fit the model's window: drop the oldest messages (system and "
        "developer kept), refuse with the upstream's own error, or send it anyway.",
    )

    def window(self, model: str) -> int | None:
        return self.windows.get(model, CONTEXT_WINDOWS.get(model))


class ShutdownPolicy(_Strict):
    grace_s: float = Field(
        default=25.0,
        gt=0,
        description="After SIGTERM, calls already sent get this long to finish (keep it under the pod's "
        "terminationGracePeriodSeconds).",
    )
    queue_s: float = Field(
        default=5.0,
        ge=0,
        description="After SIGTERM, requests still waiting in the queue are handed back (429, retry-after) "
        "after this long.",
    )

    @model_validator(mode="after")
    def _queue_within_grace(self) -> ShutdownPolicy:
        if self.queue_s >= self.grace_s:
            raise ValueError(
                f"shutdown.queue_s ({self.queue_s:g}) must be below shutdown.grace_s ({self.grace_s:g}): "
                "waiting requests are handed back before the grace period ends"
            )
        return self


class TracingConfig(_Strict):
    """Traces of requests (tracing.py), exported over OTLP/HTTP; off unless an endpoint is set."""

    otlp_endpoint: str | None = Field(
        default=None,
        pattern=r"^https?://[^\s/@]+(/\S*)?$",
        description="The collector's OTLP/HTTP traces URL, e.g. http://otel-collector.monitoring:4318 "
        "(/v1/traces is added to a URL without a path; no user:password@, which would sit in the "
        "pool's ConfigMap). Unset: no spans, no exporter.",
    )
    sample_ratio: float = Field(
        default=1.0,
        ge=0,
        le=1,
        description="Share of requests without a sampled parent that are traced (by trace id); a request "
        "whose traceparent says sampled is traced, one that says not sampled is not.",
    )

    @model_validator(mode="after")
    def _ratio_needs_endpoint(self) -> Self:
        if self.otlp_endpoint is None and self.sample_ratio != 1.0:
            raise ValueError(
                "tracing.sample_ratio applies to exported traces: set tracing.otlp_endpoint, or remove it"
            )
        return self


class AuditConfig(_Strict):
    """The audit trail (audit.py): one JSON line per answered request on stdout."""

    enabled: bool = Field(
        default=False, description="One JSON line per answered request on stdout (docs/tenants.md)."
    )
    sample_ratio: float = Field(
        default=1.0,
        ge=0,
        le=1,
        description="Share of answered requests logged; errors (status >= 400) are always logged.",
    )
    content: bool = Field(
        default=False,
        description="Include the prompt and the answer's text, masked (e-mail addresses, phone and card "
        "numbers, key-shaped strings, and mask_patterns).",
    )
    mask_patterns: list[str] = Field(
        default_factory=list,
        max_length=32,
        description="Extra regular expressions (Python re) whose matches in content become [masked].",
    )

    @field_validator("mask_patterns")
    @classmethod
    def _compiles(cls, patterns: list[str]) -> list[str]:
        for index, pattern in enumerate(patterns):
            if len(pattern) > 512:
                raise ValueError(f"mask_patterns[{index}] is longer than 512 characters")
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(
                    f"mask_patterns[{index}] {pattern!r} is not a regular expression ({exc}): fix it"
                ) from None
        return patterns

    @model_validator(mode="after")
    def _needs_enabled(self) -> Self:
        if not self.enabled:
            given = {"sample_ratio": self.sample_ratio != 1.0, "content": self.content}
            for name in (n for n, set_ in given.items() if set_):
                raise ValueError(
                    f"audit.{name} applies to audit lines: set audit.enabled: true, or remove it"
                )
        if self.mask_patterns and not self.content:
            raise ValueError(
                "audit.mask_patterns apply to logged content: set audit.content: true, or remove them"
            )
        return self


class ClientMatch(_Strict):
    """Which workloads a client is: each list given must contain the pod's value (identity.py); an
    empty match (``{}``) is every workload."""

    namespaces: list[Name] = Field(default_factory=list)
    workloads: list[str] = Field(
        default_factory=list, description="<Kind>/<name> of the pod's controller, e.g. Deployment/web."
    )
    service_accounts: list[str] = Field(default_factory=list)

    def matches(self, namespace: str, workload: str, service_account: str) -> bool:
        return (
            (not self.namespaces or namespace in self.namespaces)
            and (not self.workloads or workload in self.workloads)
            and (not self.service_accounts or service_account in self.service_accounts)
        )


class Budgets(_Strict):
    """What a client may spend per UTC day and month, counted across the pool's sidecars (spend.py)."""

    daily_usd: float | None = Field(default=None, gt=0)
    monthly_usd: float | None = Field(default=None, gt=0)
    daily_tokens: int | None = Field(default=None, gt=0)
    monthly_tokens: int | None = Field(default=None, gt=0)

    def any(self) -> bool:
        return any(v is not None for v in self.model_dump().values())


class ClientLimits(_Strict):
    """A client's own rate limits, across every model and sidecar of the pool (limits/caps.py)."""

    rpm: int | None = Field(default=None, gt=0, description="Upstream calls a minute (a sliding minute).")
    tpm: int | None = Field(
        default=None,
        gt=0,
        description="Tokens a minute, charged as the accounts' TPM charges them (prompt and max output at "
        "admission, more if the answer used more).",
    )

    @model_validator(mode="after")
    def _one_at_least(self) -> Self:
        if self.rpm is None and self.tpm is None:
            raise ValueError("a client's limits need rpm, tpm or both: give one, or remove limits")
        return self


class Client(_Strict):
    """One client of the pool: a workload (or several) with its own priority ceiling and budgets."""

    name: Name
    match: ClientMatch | None = Field(
        default=None,
        description="The pods that are this client ({} every workload); none: no pod, only the callers of "
        "its virtual_keys at a gateway.",
    )
    weight: float = Field(
        default=1.0,
        gt=0,
        le=1000,
        description="Share of a saturated model this client gets against the other clients asking "
        "(limits/fairness.py).",
    )
    max_priority: int | None = Field(
        default=None, ge=0, le=9, description="Requests asking a higher priority get this one."
    )
    virtual_keys: list[KeyRef] = Field(
        default_factory=list,
        max_length=64,
        description="Gateway mode: the keys callers of this client send as Bearer tokens; each value is the "
        "key, or sha256:<64 hex digits> of it (clients.py keeps only hashes).",
    )
    limits: ClientLimits | None = Field(
        default=None,
        description="The client's own RPM/TPM limits: its requests beyond them wait (out of the others' "
        "way) until the client's last minute allows them, or get 429 client_rate_limited.",
    )
    budgets: Budgets = Budgets()
    on_budget: Literal["refuse", "downgrade"] = Field(
        default="refuse",
        description="Once a budget is spent: refuse (429 budget_exceeded) or downgrade (answer from the "
        "requested model's fallback chain only, degraded; refused if it has none).",
    )

    @model_validator(mode="after")
    def _someone_is_it(self) -> Self:
        if self.match is None and not self.virtual_keys:
            raise ValueError(
                f"clients[{self.name}] is no pod's (no match) and no caller's (no virtual_keys): give it a "
                "match (match: {} is every workload), or virtual keys at a gateway"
            )
        return self

    @model_validator(mode="after")
    def _on_budget_needs_a_budget(self) -> Self:
        if self.on_budget != "refuse" and not self.budgets.any():
            raise ValueError(
                f"clients[{self.name}].on_budget applies once a budget is spent: give the client "
                "budgets, or remove on_budget"
            )
        return self


class GatewayConfig(_Strict):
    """Gateway mode: the sidecar as a pool-level service for callers without a sidecar of their own,
    each a client known by its virtual key (clients.py)."""

    enabled: bool = False
    tls_cert_file: Path | None = Field(default=None, description="PEM certificate chain: serve HTTPS.")
    tls_key_file: Path | None = Field(default=None, description="PEM private key of tls_cert_file.")

    @model_validator(mode="after")
    def _tls_pair(self) -> Self:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError(
                "gateway.tls_cert_file and gateway.tls_key_file go together: set both, or neither"
            )
        if self.tls_cert_file is not None and not self.enabled:
            raise ValueError("gateway TLS applies to gateway mode: set gateway.enabled: true, or remove it")
        return self


class ModelPrice(_Strict):
    """US dollars per million tokens (prices.py); reasoning tokens are billed as output."""

    input: float = Field(ge=0)
    cached_input: float | None = Field(default=None, ge=0, description="Default: the input price.")
    output: float = Field(ge=0)

    def price(self) -> Price:
        return Price(self.input, self.input if self.cached_input is None else self.cached_input, self.output)


class RetryPolicy(_Strict):
    max_attempts: int = Field(default=3, ge=1)
    backoff_base_s: float = Field(default=0.5, gt=0)
    max_retry_after_s: float = Field(default=300.0, gt=0)


class Address(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)


class PoolRef(_Strict):
    name: Name = "default"
    namespace: Name = "default"


class SidecarConfig(_Strict):
    """Version 1 of the sidecar configuration."""

    version: Literal["o1pool.io/sidecar/v1alpha1"] = CONFIG_VERSION
    pool: PoolRef = PoolRef()
    listen: Address = Address()
    metrics: Address = Address(host="0.0.0.0", port=9090)
    redis: RedisConfig = RedisConfig()
    accounts: list[Account] = Field(min_length=1)
    tokens: TokenPolicy = TokenPolicy()
    queue: QueuePolicy = QueuePolicy()
    cache: CachePolicy = CachePolicy()
    fallback: FallbackPolicy = FallbackPolicy()
    timeouts: Timeouts = Timeouts()
    shutdown: ShutdownPolicy = ShutdownPolicy()
    context: ContextPolicy = ContextPolicy()
    retry: RetryPolicy = RetryPolicy()
    tracing: TracingConfig = TracingConfig()
    audit: AuditConfig = AuditConfig()
    gateway: GatewayConfig = GatewayConfig()
    clients: list[Client] = Field(
        default_factory=list,
        max_length=256,
        description="The pool's clients; a sidecar is the first whose match its pod's identity meets.",
    )
    prices: dict[str, ModelPrice] = Field(
        default_factory=dict,
        max_length=64,
        description="Per-model prices overriding the shipped ones (prices.py), by model the pool serves.",
    )
    max_body_bytes: int = Field(default=8 * 1024 * 1024, gt=0)

    @model_validator(mode="after")
    def _check(self) -> Self:
        names = [a.name for a in self.accounts]
        if len(set(names)) != len(names):
            raise ValueError("account names must be unique")
        if self.queue.default_deadline_ms > self.queue.max_deadline_ms:
            raise ValueError("queue.default_deadline_ms must not exceed queue.max_deadline_ms")
        for model, chain in self.fallback.chains.items():
            if model in chain:
                raise ValueError(f"fallback.chains[{model!r}] must not contain {model!r} itself")
        if self.redis.url is None:  # the prediction they follow comes through the pool's Redis
            for account in self.accounts:
                if account.reserve:
                    raise ValueError(
                        f"account {account.name!r} is a reserve, which serves only under a prediction "
                        "published through Redis: set redis.url, or make it not a reserve"
                    )
            if self.cache.ttl_follows_load:
                raise ValueError(
                    "cache.ttl_follows_load follows a prediction published through Redis: set redis.url, "
                    "or turn it off"
                )
        clients = [c.name for c in self.clients]
        if len(set(clients)) != len(clients):
            raise ValueError("client names must be unique")
        keyed = [c.name for c in self.clients if c.virtual_keys]
        if self.gateway.enabled and not keyed:
            raise ValueError(
                "gateway mode answers only callers with a client's virtual key: give a client virtual_keys"
            )
        if keyed and not self.gateway.enabled:
            raise ValueError(
                f"clients {', '.join(keyed)} have virtual_keys, which only a gateway checks: set "
                "gateway.enabled: true (the operator's gateway config), or remove them"
            )
        if self.redis.url is None:
            for client in self.clients:
                if client.budgets.any():
                    raise ValueError(
                        f"clients[{client.name}] has budgets, which are counted across the pool's "
                        "sidecars through Redis: set redis.url, or remove the budgets"
                    )
                if client.limits is not None:
                    raise ValueError(
                        f"clients[{client.name}] has limits, which are counted across the pool's "
                        "sidecars through Redis: set redis.url, or remove the limits"
                    )
        unserved = sorted(set(self.prices) - set(self.served_models()))
        if unserved:
            raise ValueError(
                f"prices names model(s) {', '.join(map(repr, unserved))} that no account serves "
                f"(served: {', '.join(self.served_models())}): remove them, or add the model to an account"
            )
        for model in self.served_models():
            if all(a.reserve for a in self.accounts_for(model)):
                raise ValueError(
                    f"model {model!r} is served only by reserve accounts, which idle unless a peak is "
                    "predicted: make one of its accounts not a reserve"
                )
        return self

    def served_models(self) -> list[str]:
        """Every model some account serves, sorted."""
        return sorted({m for a in self.accounts for m in a.serves()})

    def client_for(self, namespace: str, workload: str, service_account: str) -> Client | None:
        """The first client whose match the workload meets (``None``: it is none of them)."""
        return next(
            (
                c
                for c in self.clients
                if c.match is not None and c.match.matches(namespace, workload, service_account)
            ),
            None,
        )

    def price_table(self) -> PriceTable:
        return PriceTable({model: p.price() for model, p in self.prices.items()})

    def accounts_for(self, model: str) -> list[Account]:
        return [a for a in self.accounts if a.limits_for(model) is not None]

    @classmethod
    def from_dict(cls, data: object, source: str = "<config>") -> SidecarConfig:
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ConfigError(format_validation_error(exc, source, "docs/sidecar-config.md")) from None

    @classmethod
    def load(cls, path: str | Path) -> SidecarConfig:
        return cls.from_dict(read_yaml_mapping(path, ConfigError), str(path))

    def to_yaml(self) -> str:
        """The whole config, defaults written out; except the blocks added after v1alpha1's first
        release while they are at their defaults (audit, gateway, clients, prices, a client's limits,
        redis.cluster), so that a pool that sets none of them renders the config it rendered before them
        (and keeps its sidecars)."""
        data = self.model_dump(mode="json", exclude_defaults=False)
        if not self.redis.cluster:
            del data["redis"]["cluster"]
        for client in data.get("clients") or []:
            if client.get("limits") is None:
                del client["limits"]
        if self.audit == AuditConfig():
            del data["audit"]
        if not self.prices:
            del data["prices"]
        if not self.clients:
            del data["clients"]
        if self.gateway == GatewayConfig():
            del data["gateway"]
        return yaml.safe_dump(data, sort_keys=False)
