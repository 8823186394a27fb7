"""All emulator state and the decisions on one request before its answer: the key, the model, the
completion budget, the context window and the limits (with their counters, rate-limit headers and
429 answers), faults chosen, charges, ids and latency. The HTTP routes (server.py) call it."""

from __future__ import annotations

import math
import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from o1common.durations import format_duration
from o1emulator import errors
from o1emulator.charge import BUDGET_FIELDS, admission_charge, prompt_estimate
from o1emulator.config import Account, ApiKey, EmulatorConfig, ModelSpec, parse_faults
from o1emulator.faults import FaultChoice, FaultPlan
from o1emulator.limits import AccountModelLimiter, Allowed, Refused, SourceLimiter
from o1emulator.stats import Counters, Timeline, limiter_report
from o1emulator.wire import FIXED_CREATED, ApiError

Clock = Callable[[], float]


@dataclass
class Target:
    """One request's resolved account, key, model and limiter."""

    account: Account
    key: ApiKey
    model: str
    spec: ModelSpec
    limiter: AccountModelLimiter
    model_counters: Counters
    key_counters: Counters


class Emulator:
    """All emulator state: accounts, limiters, counters, faults. ``clock`` gives monotonic seconds."""

    def __init__(
        self, config: EmulatorConfig, clock: Clock = time.monotonic, wall: Clock = time.time
    ) -> None:
        self.config = config
        self.clock = clock
        self.wall = wall
        self.started = clock()
        self.keys: dict[str, tuple[Account, ApiKey]] = {
            key.key: (account, key) for account in config.accounts for key in account.keys
        }
        self.faults = FaultPlan(config.faults, config.seed)
        per_hour = config.source_ip_requests_per_hour
        self.sources = SourceLimiter(per_hour) if per_hour else None
        self.totals: Counter[str] = Counter()
        self._build_limiters()

    def _build_limiters(self) -> None:
        now = self.clock()
        config = self.config
        self.limiters: dict[tuple[str, str], AccountModelLimiter] = {}
        self.model_counters: dict[tuple[str, str], Counters] = {}
        self.key_counters: dict[tuple[str, str], Counters] = {}
        self.timeline = Timeline(now)
        for account in config.accounts:
            for model in config.models:
                limits = config.enforced_limits(account, model)
                if limits is None:
                    continue
                self.limiters[account.name, model] = AccountModelLimiter(
                    limits,
                    config.burst,
                    config.penalty,
                    now,
                    config.concurrency_retry_after_s,
                    config.count_rejected,
                    config.limiter_for(account),
                )
                self.model_counters[account.name, model] = Counters()
            for key in account.keys:
                self.key_counters[account.name, key.name] = Counters()

    # --- admin -------------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Exact counters; the shape is documented in docs/emulator.md."""
        now = self.clock()
        accounts: dict[str, Any] = {}
        violations: list[str] = []
        for account in self.config.accounts:
            models = {}
            for model in self.config.models:
                limiter = self.limiters.get((account.name, model))
                if limiter is None:
                    continue
                report = limiter_report(self.model_counters[account.name, model], limiter, now)
                models[model] = report
                for what, exceeded in report["exceeded"].items():
                    if exceeded:
                        violations.append(f"{account.name}/{model}: {what} limit exceeded")
            keys = {key.name: self.key_counters[account.name, key.name].as_dict() for key in account.keys}
            accounts[account.name] = {"organization": account.org, "models": models, "keys": keys}
        return {
            "uptime_s": now - self.started,
            "totals": dict(self.totals),
            "accounts": accounts,
            "faults": self.faults.describe(),
            "violations": violations,
        }

    def reset(self, buckets: bool = False) -> None:
        """Zero the counters; with ``buckets`` also refill every bucket and clear penalties and caps."""
        self.totals.clear()
        self.timeline.clear(self.clock())
        for counters in (*self.model_counters.values(), *self.key_counters.values()):
            counters.reset()
        now = self.clock()
        if buckets and self.sources is not None:
            self.sources.buckets.clear()
        for limiter in self.limiters.values():
            if buckets:
                limiter.restart(now)
            else:
                limiter.forget_peaks()

    def set_faults(self, rules: list[Any], add: bool = False) -> None:
        parsed = parse_faults(rules, self.config)
        if add:
            self.faults.add(parsed)
        else:
            self.faults.replace(parsed)

    # --- request pipeline --------------------------------------------------------------------------

    def authenticate(self, request: web.Request) -> tuple[Account, ApiKey]:
        header = request.headers.get("Authorization")
        token = None
        if header is not None:
            scheme, _, value = header.partition(" ")
            token = value.strip() if scheme.lower() == "bearer" else header.strip()
        if not token:
            token = request.headers.get("api-key")
        if not token:
            raise ApiError(401, errors.missing_api_key())
        found = self.keys.get(token)
        if found is None:
            raise ApiError(401, errors.invalid_api_key(token))
        return found

    def target(self, account: Account, key: ApiKey, model: Any, kind: str) -> Target:
        if not isinstance(model, str) or not model:
            raise ApiError(400, errors.invalid_request("you must provide a model parameter", "model"))
        spec = self.config.models.get(model)
        limiter = self.limiters.get((account.name, model))
        if spec is None or limiter is None:
            raise ApiError(404, errors.model_not_found(model))
        if spec.kind != kind:
            what = "an embedding model" if spec.kind == "embedding" else "not an embedding model"
            raise ApiError(
                400,
                errors.invalid_request(
                    f"The model `{model}` is {what}; use the "
                    f"{'embeddings' if spec.kind == 'embedding' else 'chat'} "
                    "endpoint for it.",
                    "model",
                    "invalid_model",
                ),
            )
        return Target(
            account,
            key,
            model,
            spec,
            limiter,
            self.model_counters[account.name, model],
            self.key_counters[account.name, key.name],
        )

    def check_budget(self, body: dict[str, Any]) -> None:
        """A completion budget that is set must be a positive integer, as OpenAI insists."""
        for field in BUDGET_FIELDS:
            value = body.get(field)
            if value is None:
                continue
            if not isinstance(value, int) or isinstance(value, bool):
                raise ApiError(
                    400,
                    errors.invalid_request(
                        f"Invalid type for '{field}': expected an integer, "
                        f"but got {type(value).__name__} instead.",
                        field,
                        "invalid_type",
                    ),
                )
            if value < 1:
                raise ApiError(
                    400,
                    errors.invalid_request(
                        f"Invalid '{field}': integer below minimum value. "
                        f"Expected a value >= 1, but got {value} instead.",
                        field,
                        "integer_below_min_value",
                    ),
                )

    def rate_headers(self, target: Target, fault: FaultChoice) -> dict[str, str]:
        rule = fault.headers
        limiter = target.limiter
        if (rule is not None and rule.kind == "no_headers") or not limiter.spec.headers:
            return {}
        if rule is not None:
            return {
                "x-ratelimit-limit-requests": rule.value,
                "x-ratelimit-limit-tokens": rule.value,
                "x-ratelimit-remaining-requests": rule.value,
                "x-ratelimit-remaining-tokens": rule.value,
                "x-ratelimit-reset-requests": "0s",
                "x-ratelimit-reset-tokens": "0s",
            }
        requests_left, tokens_left, requests_reset, tokens_reset = limiter.snapshot(self.clock())
        return {
            "x-ratelimit-limit-requests": str(limiter.limits.rpm),
            "x-ratelimit-limit-tokens": str(limiter.limits.tpm),
            "x-ratelimit-remaining-requests": str(max(0, int(requests_left))),
            "x-ratelimit-remaining-tokens": str(max(0, int(tokens_left))),
            "x-ratelimit-reset-requests": format_duration(requests_reset),
            "x-ratelimit-reset-tokens": format_duration(tokens_reset),
        }

    def admit(
        self, target: Target, charge: int, prompt: int, budget: int | None, stream: bool, source: str
    ) -> FaultChoice:
        """Check the context window and the limits; count the outcome. Raises ApiError when refused."""
        spec, limiter = target.spec, target.limiter
        if prompt + (budget or 0) > spec.context_window:
            fault = self.faults.choose(target.account.name, target.model, stream, admitted=False)
            raise ApiError(
                400,
                errors.context_length_exceeded(spec.context_window, prompt, budget),
                self.rate_headers(target, fault),
            )
        now = self.clock()
        refusal = self.sources.check(source, now) if self.sources is not None else None
        decision = refusal or limiter.admit(charge, now)
        if isinstance(decision, Allowed):
            if self.sources is not None:
                self.sources.take(source, now)
            self.totals["admitted"] += 1
            self.timeline.add(target.account.name, target.model, now, admitted=True)
            target.model_counters.admit(charge)
            target.key_counters.admit(charge)
            fault = self.faults.choose(target.account.name, target.model, stream)
            if fault.outcome is not None:
                target.model_counters.faults[fault.outcome.kind] += 1
                target.key_counters.faults[fault.outcome.kind] += 1
            if fault.headers is not None:
                target.model_counters.faults[fault.headers.kind] += 1
                target.key_counters.faults[fault.headers.kind] += 1
            return fault
        target.model_counters.rejected[decision.kind] += 1
        target.key_counters.rejected[decision.kind] += 1
        self.timeline.add(target.account.name, target.model, now, admitted=False)
        fault = self.faults.choose(target.account.name, target.model, stream, admitted=False)
        if fault.headers is not None:
            target.model_counters.faults[fault.headers.kind] += 1
            target.key_counters.faults[fault.headers.kind] += 1
        raise ApiError(
            429, self.rejection_body(target, decision), self.rejection_headers(target, decision, fault)
        )

    def rejection_body(self, target: Target, decision: Refused) -> dict[str, Any]:
        org = target.account.org
        if decision.kind == "too_large":
            return errors.request_too_large(target.model, org, decision.limit, decision.requested)
        if decision.kind == "quota":
            return errors.insufficient_quota()
        if decision.kind == "source_ip":
            assert decision.retry_after_s is not None
            return errors.source_rate_limited(decision.limit, decision.used, decision.retry_after_s)
        assert decision.retry_after_s is not None
        return errors.rate_limited(
            decision.kind,
            target.model,
            org,
            decision.limit,
            decision.used,
            decision.requested,
            decision.retry_after_s,
        )

    def rejection_headers(self, target: Target, decision: Refused, fault: FaultChoice) -> dict[str, str]:
        headers = self.rate_headers(target, fault)
        if decision.retry_after_s is not None:
            ms = max(1, math.ceil(decision.retry_after_s * 1000))
            headers["retry-after"] = str(math.ceil(ms / 1000))
            headers["retry-after-ms"] = str(ms)
        return headers

    def prompt_estimate(self, body: dict[str, Any], model: str) -> int:
        return prompt_estimate(body, self.config.tokens.estimate, model)

    def prompt_tokens(self, body: dict[str, Any], model: str) -> int:
        """What ``usage`` reports: the tokenizer's count, as OpenAI's usage does, whatever estimate
        the TPM charge used."""
        return prompt_estimate(body, "tiktoken", model)

    def charge(self, prompt: int, budget: int | None, choices: int) -> int:
        rule = self.config.tokens
        return admission_charge(prompt, budget, choices, rule.charge, rule.default_max_tokens)

    def count_completion(self, target: Target, tokens: int) -> None:
        target.model_counters.completion_tokens += tokens
        target.key_counters.completion_tokens += tokens

    def release(self, target: Target) -> None:
        target.limiter.release()
        target.model_counters.in_flight -= 1
        target.key_counters.in_flight -= 1

    def new_ids(self, seed: int, prefix: str) -> tuple[str, int]:
        if self.config.seed is not None:
            return f"{prefix}{seed:016x}{seed % 99991:08x}", FIXED_CREATED
        return prefix + os.urandom(12).hex(), int(self.wall())

    def latency(self, spec: ModelSpec) -> tuple[float, float]:
        """Seconds before the first token and per output token (0, 0 without latency)."""
        scale = self.config.latency_scale
        if scale <= 0:
            return 0.0, 0.0
        per_token = scale / spec.latency.tokens_per_s if spec.latency.tokens_per_s > 0 else 0.0
        return scale * spec.latency.ttft_ms / 1000.0, per_token
