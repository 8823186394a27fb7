"""The emulator's configuration: accounts and their keys, per-model limits, the model catalogue, the
TPM charge rule, latency, and faults. Validated with pydantic; errors name the field.

Keys here are fake test keys the emulator accepts; stats and logs show key *names* only.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from o1common.configfiles import format_validation_error, read_yaml_mapping
from o1common.tiers import TIER_PRESETS, tier_limits

Name = Annotated[str, Field(pattern=r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$")]


class EmulatorConfigError(ValueError):
    """A config that cannot be used; the message names the source, the field and what was wrong."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelLimits(_Strict):
    """Limits one account has for one model, shared by all the account's keys."""

    rpm: int | None = Field(default=None, gt=0, description="Requests per minute.")
    tpm: int | None = Field(default=None, gt=0, description="Tokens per minute, charged at admission.")
    concurrency: int | None = Field(default=None, gt=0, description="Requests in flight; unset = unlimited.")
    daily_requests: int | None = Field(default=None, gt=0, description="Requests per day (fixed window).")
    monthly_requests: int | None = Field(default=None, gt=0, description="Requests per 30 days.")


class ResolvedLimits(_Strict):
    rpm: int
    tpm: int
    concurrency: int | None = None
    daily_requests: int | None = None
    monthly_requests: int | None = None


class ApiKey(_Strict):
    name: Name = Field(description="Shown in stats; the key value never is.")
    key: str = Field(min_length=8, description="The bearer token (or Azure api-key) clients send.")


class Account(_Strict):
    """An organisation/project. Its keys share one set of limits per model."""

    name: Name
    organization: str | None = Field(default=None, description="Shown in 429 messages; default org-<name>.")
    tier: int | None = Field(
        default=None, ge=1, le=5, description="Fill limits from the published tier presets."
    )
    keys: list[ApiKey] = Field(min_length=1)
    models: dict[str, ModelLimits] = Field(default_factory=dict)
    limiter: LimiterSpec | None = Field(
        default=None, description="This account's algorithm; default: the top level's."
    )

    @property
    def org(self) -> str:
        return self.organization or f"org-{self.name}"

    def limits_for(self, model: str) -> ResolvedLimits | None:
        """Tier preset overlaid with this account's numbers; ``None`` when the account has no access."""
        preset = tier_limits(self.tier, model) if self.tier else None
        override = self.models.get(model)
        if preset is None and override is None:
            return None
        merged: dict[str, Any] = {} if preset is None else dict(vars(preset))
        if override is not None:
            merged.update({k: v for k, v in override.model_dump().items() if v is not None})
        if merged.get("rpm") is None or merged.get("tpm") is None:
            return None
        return ResolvedLimits(**merged)

    def model_names(self) -> list[str]:
        return sorted(set(self.models) | set(TIER_PRESETS.get(self.tier or 0, {})))


class Latency(_Strict):
    ttft_ms: float = Field(default=0.0, ge=0, description="Time to first token, before reasoning.")
    tokens_per_s: float = Field(default=0.0, ge=0, description="Output speed incl. reasoning; 0 = instant.")


class ModelSpec(_Strict):
    """One model of the catalogue."""

    kind: Literal["chat", "embedding"] = "chat"
    reasoning: bool = Field(default=False, description="Reports reasoning_tokens; o1, o3 and similar.")
    context_window: int = Field(default=128_000, gt=0)
    max_output_tokens: int = Field(default=16_384, gt=0)
    output_tokens: tuple[int, int] = Field(default=(16, 48), description="Visible answer length range.")
    reasoning_tokens: tuple[int, int] = Field(default=(0, 0), description="Hidden reasoning length range.")
    dimensions: int = Field(default=1536, gt=0, description="Embedding length (embedding models).")
    latency: Latency = Latency()

    @model_validator(mode="after")
    def _ranges(self) -> Self:
        for field in ("output_tokens", "reasoning_tokens"):
            low, high = getattr(self, field)
            if not 0 <= low <= high:
                raise ValueError(f"{field} must be [low, high] with 0 <= low <= high, got [{low}, {high}]")
        if self.kind == "chat" and self.output_tokens[0] < 1:
            raise ValueError("output_tokens: a chat model answers with at least 1 token")
        return self


class TokenRule(_Strict):
    """How this upstream estimates a prompt and charges TPM at admission (charge.py)."""

    charge: Literal["max", "sum"] = Field(
        default="max", description="max: larger of the completion budget and the prompt; sum: both."
    )
    default_max_tokens: int = Field(
        default=4096, gt=0, description="Budget assumed when a request sets none."
    )
    estimate: Literal["chars", "json_chars", "tiktoken"] = Field(
        default="chars",
        description="Prompt estimate: text characters / 4, escaped-JSON characters / 4, or BPE tokens.",
    )


class LimiterSpec(_Strict):
    """How an account's upstream enforces its per-minute limits (limits.py)."""

    algorithm: Literal["token_bucket", "sliding_log", "fixed_window"] = "token_bucket"
    window_s: float = Field(
        default=60.0,
        gt=0,
        le=60,
        description="sliding_log / fixed_window: the window; under 60 s it enforces limit * window_s / 60.",
    )
    headers: bool = Field(default=True, description="Send the x-ratelimit-* headers.")
    retry_after_s: float | None = Field(
        default=None, gt=0, description="Unset: retry-after is the exact wait; set: always this value."
    )
    limit_scale: float = Field(
        default=1.0,
        gt=0,
        le=1,
        description="The account really gets this share of its listed RPM, TPM and concurrency.",
    )


class Penalty(_Strict):
    """Consecutive 429s on one account+model lengthen the wait: base_s * 2**(n-1), at most max_s."""

    enabled: bool = False
    base_s: float = Field(default=1.0, gt=0)
    max_s: float = Field(default=300.0, gt=0)


FaultKind = Literal["error_5xx", "hang", "reset", "cut_stream", "no_headers", "lying_headers"]


class FaultRule(_Strict):
    """One fault. Fires with ``probability`` (seeded RNG) on matching requests, at most ``count`` times."""

    kind: FaultKind
    probability: float = Field(default=1.0, ge=0, le=1)
    count: int | None = Field(default=None, ge=1, description="Fire for the next N matching requests only.")
    model: str | None = Field(default=None, description="Only requests for this model.")
    account: str | None = Field(default=None, description="Only requests of this account.")
    status: int = Field(default=500, ge=500, le=599, description="error_5xx: the status to answer.")
    hang_s: float = Field(default=3600.0, gt=0, description="hang: how long to hold the request.")
    after_tokens: int = Field(default=4, ge=0, description="cut_stream: content tokens sent before the cut.")
    value: str = Field(default="-1", description="lying_headers: value of limit/remaining headers.")


class EmulatorConfig(_Strict):
    """The whole emulator configuration (YAML file or dict)."""

    seed: int | None = Field(
        default=None, description="Set: ids and created timestamps are deterministic too, not only content."
    )
    burst: float = Field(
        default=1.0,
        gt=0,
        description="token_bucket capacity as a multiple of the minute limit (below 1: less than a "
        "minute's worth, at least one request).",
    )
    tokens: TokenRule = TokenRule()
    limiter: LimiterSpec = LimiterSpec()
    penalty: Penalty = Penalty()
    latency_scale: float = Field(default=0.0, ge=0, description="Multiplies every model's latency; 0 = none.")
    stream_chunk_tokens: int = Field(default=4, ge=1, description="Content tokens per SSE chunk.")
    concurrency_retry_after_s: float = Field(
        default=1.0, gt=0, description="Retry-After of a concurrency 429."
    )
    source_ip_requests_per_hour: int | None = Field(
        default=None, gt=0, description="Requests per hour from one client address across all keys."
    )
    count_rejected: bool = Field(
        default=False,
        description="A refused request still spends one request of RPM (down to -capacity), as OpenAI "
        "counts unsuccessful requests: blind retries then starve themselves.",
    )
    models: dict[str, ModelSpec] = Field(min_length=1)
    deployments: dict[str, str] = Field(default_factory=dict, description="Azure deployment -> model.")
    accounts: list[Account] = Field(min_length=1)
    faults: list[FaultRule] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check(self) -> Self:
        names = [a.name for a in self.accounts]
        if len(set(names)) != len(names):
            raise ValueError("accounts: account names must be unique")
        seen: set[str] = set()
        for account in self.accounts:
            for key in account.keys:
                if key.key in seen:
                    raise ValueError(
                        f"accounts: key {key.name!r} of {account.name!r} reuses another key's value"
                    )
                seen.add(key.key)
            for model in account.models:
                if model not in self.models:
                    raise ValueError(f"accounts: {account.name!r} sets limits for {model!r}, not in 'models'")
                if account.limits_for(model) is None:
                    raise ValueError(
                        f"accounts: {account.name!r}, model {model!r}: set both rpm and tpm "
                        "(or a tier that includes this model)"
                    )
        for deployment, model in self.deployments.items():
            if model not in self.models:
                raise ValueError(f"deployments: {deployment!r} names {model!r}, not in 'models'")
        for fault in self.faults:
            _check_fault_scope(fault, self)
        return self

    def limiter_for(self, account: Account) -> LimiterSpec:
        return account.limiter or self.limiter

    def enforced_limits(self, account: Account, model: str) -> ResolvedLimits | None:
        """The limits the upstream really enforces: the listed ones times the account's ``limit_scale``."""
        listed = account.limits_for(model)
        scale = self.limiter_for(account).limit_scale
        if listed is None or scale == 1.0:
            return listed

        def scaled(value: int) -> int:
            return max(1, math.floor(value * scale))

        concurrency = None if listed.concurrency is None else scaled(listed.concurrency)
        return listed.model_copy(
            update={"rpm": scaled(listed.rpm), "tpm": scaled(listed.tpm), "concurrency": concurrency}
        )

    @classmethod
    def from_dict(cls, data: object, source: str = "<config>") -> EmulatorConfig:
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise EmulatorConfigError(_validation_message(exc, source)) from None

    @classmethod
    def load(cls, path: str | Path) -> EmulatorConfig:
        return cls.from_dict(read_yaml_mapping(path, EmulatorConfigError), str(path))


def _validation_message(exc: ValidationError, source: str) -> str:
    return format_validation_error(exc, source, "docs/emulator.md")


def _check_fault_scope(fault: FaultRule, config: EmulatorConfig) -> None:
    if fault.model is not None and fault.model not in config.models:
        raise ValueError(f"faults: model {fault.model!r} is not in 'models'")
    if fault.account is not None and fault.account not in {a.name for a in config.accounts}:
        raise ValueError(f"faults: account {fault.account!r} is not in 'accounts'")


def parse_faults(data: object, config: EmulatorConfig, source: str = "faults") -> list[FaultRule]:
    """Validate a run-time fault list (admin endpoint) against the config's models and accounts."""
    if not isinstance(data, list):
        raise EmulatorConfigError(f"{source}: expected a list of fault rules, got {type(data).__name__}")
    rules = []
    for index, item in enumerate(data):
        try:
            rule = FaultRule.model_validate(item)
            _check_fault_scope(rule, config)
        except ValidationError as exc:
            raise EmulatorConfigError(_validation_message(exc, f"{source}[{index}]")) from None
        except ValueError as exc:
            raise EmulatorConfigError(f"{source}[{index}]: {exc}") from None
        rules.append(rule)
    return rules


_REASONING = {"reasoning": True, "output_tokens": (16, 48), "reasoning_tokens": (64, 256)}

DEFAULT_CONFIG: dict[str, Any] = {
    "models": {
        "o1": {
            **_REASONING,
            "context_window": 200_000,
            "max_output_tokens": 100_000,
            "latency": {"ttft_ms": 2000, "tokens_per_s": 80},
        },
        "o1-mini": {
            **_REASONING,
            "context_window": 128_000,
            "max_output_tokens": 65_536,
            "latency": {"ttft_ms": 800, "tokens_per_s": 150},
        },
        "o1-preview": {
            **_REASONING,
            "context_window": 128_000,
            "max_output_tokens": 32_768,
            "latency": {"ttft_ms": 2000, "tokens_per_s": 60},
        },
        "o3-mini": {
            **_REASONING,
            "context_window": 200_000,
            "max_output_tokens": 100_000,
            "latency": {"ttft_ms": 800, "tokens_per_s": 150},
        },
        "gpt-4o": {
            "context_window": 128_000,
            "max_output_tokens": 16_384,
            "latency": {"ttft_ms": 300, "tokens_per_s": 100},
        },
        "gpt-4o-mini": {
            "context_window": 128_000,
            "max_output_tokens": 16_384,
            "latency": {"ttft_ms": 200, "tokens_per_s": 150},
        },
        "text-embedding-3-small": {
            "kind": "embedding",
            "context_window": 8191,
            "dimensions": 1536,
            "latency": {"ttft_ms": 50},
        },
    },
    "accounts": [
        {
            "name": "acct-a",
            "keys": [
                {"name": "a1", "key": "sk-emu-acct-a-key-1"},
                {"name": "a2", "key": "sk-emu-acct-a-key-2"},
            ],
            "models": {
                "o1": {"rpm": 20, "tpm": 400_000, "concurrency": 10},
                "o1-mini": {"rpm": 100, "tpm": 800_000, "concurrency": 10},
                "o1-preview": {"rpm": 50, "tpm": 400_000, "concurrency": 10},
                "o3-mini": {"rpm": 100, "tpm": 800_000, "concurrency": 10},
                "gpt-4o": {"rpm": 500, "tpm": 300_000, "concurrency": 50},
                "gpt-4o-mini": {"rpm": 500, "tpm": 2_000_000, "concurrency": 50},
                "text-embedding-3-small": {"rpm": 3000, "tpm": 1_000_000},
            },
        },
        {
            "name": "acct-b",
            "keys": [{"name": "b1", "key": "sk-emu-acct-b-key-1"}],
            "models": {
                "o1": {"rpm": 50, "tpm": 2_000_000, "concurrency": 25},
                "o1-mini": {"rpm": 250, "tpm": 5_000_000, "concurrency": 25},
                "o1-preview": {"rpm": 100, "tpm": 2_000_000, "concurrency": 25},
                "o3-mini": {"rpm": 250, "tpm": 5_000_000, "concurrency": 25},
                "gpt-4o": {"rpm": 500, "tpm": 300_000, "concurrency": 50},
                "gpt-4o-mini": {"rpm": 500, "tpm": 2_000_000, "concurrency": 50},
                "text-embedding-3-small": {"rpm": 3000, "tpm": 1_000_000},
            },
        },
    ],
}


def default_config() -> EmulatorConfig:
    """The embedded configuration used when no ``--config`` is given."""
    return EmulatorConfig.from_dict(DEFAULT_CONFIG, "<embedded default>")
