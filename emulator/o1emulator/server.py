"""The emulator's aiohttp application: thin handlers around the pure limiter, charge, fault and content
modules. One :class:`Emulator` holds all state; :meth:`Emulator.app` serves it."""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
import socket
import struct
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from o1common.durations import format_duration
from o1emulator import content, errors
from o1emulator.charge import BUDGET_FIELDS, admission_charge, prompt_estimate, requested_budget
from o1emulator.config import Account, ApiKey, EmulatorConfig, EmulatorConfigError, ModelSpec, parse_faults
from o1emulator.faults import FaultChoice, FaultPlan
from o1emulator.limits import AccountModelLimiter, Allowed, Refused, SourceLimiter
from o1emulator.stats import Counters, Timeline, limiter_report

Clock = Callable[[], float]
FIXED_CREATED = 1_735_689_600  # 2025-01-01T00:00:00Z: "created" of every answer when a seed is set
RATE_LIMIT_HEADERS = (
    "x-ratelimit-limit-requests",
    "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-requests",
    "x-ratelimit-reset-tokens",
)


class ApiError(Exception):
    """An OpenAI-style error answer; raised inside handlers, turned into a JSON response."""

    def __init__(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        super().__init__(body["error"]["message"])
        self.status = status
        self.body = body
        self.headers = headers or {}


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

    # --- handlers ----------------------------------------------------------------------------------

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        account, key = self.authenticate(request)
        body = await read_json(request)
        return await self._chat(request, account, key, body, body.get("model"))

    async def azure_chat_completions(self, request: web.Request) -> web.StreamResponse:
        account, key = self.authenticate(request)
        model = self.azure_model(request)
        body = await read_json(request)
        return await self._chat(request, account, key, body, model)

    def azure_model(self, request: web.Request) -> str:
        if not request.query.get("api-version"):
            raise ApiError(
                400,
                errors.invalid_request(
                    "Missing required query parameter 'api-version' (e.g. ?api-version=2024-10-21).",
                    "api-version",
                    "missing_required_parameter",
                ),
            )
        deployment = request.match_info["deployment"]
        model = self.config.deployments.get(deployment, deployment)
        if model not in self.config.models:
            raise ApiError(404, errors.deployment_not_found(deployment))
        return model

    async def _chat(
        self, request: web.Request, account: Account, key: ApiKey, body: dict[str, Any], model: Any
    ) -> web.StreamResponse:
        target = self.target(account, key, model, "chat")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise ApiError(400, errors.missing_parameter("messages"))
        choices = body.get("n") or 1
        if not isinstance(choices, int) or isinstance(choices, bool) or not 1 <= choices <= 128:
            raise ApiError(
                400,
                errors.invalid_request(
                    f"Invalid 'n': expected an integer 1..128, got {choices!r}.", "n", "invalid_value"
                ),
            )
        stream = body.get("stream") is True
        self.check_budget(body)
        prompt, budget = self.prompt_estimate(body, target.model), requested_budget(body)
        charge = self.charge(prompt, budget, choices)
        fault = self.admit(target, charge, prompt, budget, stream, request.remote or "unknown")
        try:
            headers = self.rate_headers(target, fault)
            seed = content.request_seed(body, self.config.seed)
            answer = content.plan_answer(seed, target.spec, budget)
            self.count_completion(target, answer.completion_tokens * choices)
            usage = content.chat_usage(self.prompt_tokens(body, target.model), answer, choices)
            id_, created = self.new_ids(seed, "chatcmpl-")
            await self.apply_outcome_fault(request, fault, headers)
            ttft, per_token = self.latency(target.spec)
            if not stream:
                await pause(ttft + per_token * (answer.completion_tokens))
                return json_response(
                    200, content.chat_completion(id_, created, target.model, answer, usage, choices), headers
                )
            options = body.get("stream_options")
            include_usage = isinstance(options, dict) and options.get("include_usage") is True
            writer = content.ChunkWriter(id_, created, target.model, include_usage)
            out = await SseStream.start(request, headers, buffered=ttft == 0 and per_token == 0)
            await pause(ttft + per_token * answer.reasoning_tokens)
            await out.send(writer.role())
            await self.stream_tokens(request, out, answer, fault, per_token, writer.content)
            await out.send(writer.finish(answer.finish_reason))
            if include_usage:
                await out.send(writer.usage(usage))
            await out.send(content.DONE)
            return await out.close()
        finally:
            self.release(target)

    async def stream_tokens(
        self,
        request: web.Request,
        out: SseStream,
        answer: content.Answer,
        fault: FaultChoice,
        per_token: float,
        encode: Callable[[str], bytes],
    ) -> None:
        """Send the answer's tokens in chunks; a ``cut_stream`` fault closes the connection part way."""
        step = self.config.stream_chunk_tokens
        cut_at = fault.outcome.after_tokens if fault.outcome and fault.outcome.kind == "cut_stream" else None
        tokens = answer.tokens
        for start in range(0, len(tokens), step):
            if cut_at is not None and start >= cut_at:
                break
            end = start + step if cut_at is None else min(start + step, cut_at)
            await pause(per_token * (end - start))
            await out.send(encode("".join(tokens[start:end])))
        if cut_at is not None:
            await out.flush()
            if request.transport is not None:
                request.transport.close()  # FIN, not RST: what was sent stays readable
            raise asyncio.CancelledError

    async def apply_outcome_fault(
        self, request: web.Request, fault: FaultChoice, headers: dict[str, str]
    ) -> None:
        rule = fault.outcome
        if rule is None or rule.kind == "cut_stream":
            return
        if rule.kind == "error_5xx":
            raise ApiError(rule.status, errors.server_error(rule.status), headers)
        if rule.kind == "hang":
            await asyncio.sleep(rule.hang_s)
        elif rule.kind == "reset":
            abort_connection(request)
            raise asyncio.CancelledError

    async def responses(self, request: web.Request) -> web.StreamResponse:
        account, key = self.authenticate(request)
        body = await read_json(request)
        target = self.target(account, key, body.get("model"), "chat")
        if body.get("input") in (None, "", []):
            raise ApiError(400, errors.missing_parameter("input"))
        stream = body.get("stream") is True
        self.check_budget(body)
        prompt, budget = self.prompt_estimate(body, target.model), requested_budget(body)
        charge = self.charge(prompt, budget, 1)
        fault = self.admit(target, charge, prompt, budget, stream, request.remote or "unknown")
        try:
            headers = self.rate_headers(target, fault)
            seed = content.request_seed(body, self.config.seed)
            answer = content.plan_answer(seed, target.spec, budget)
            self.count_completion(target, answer.completion_tokens)
            usage = content.response_usage(self.prompt_tokens(body, target.model), answer)
            id_, created = self.new_ids(seed, "resp_")
            builder = content.ResponseBuilder(id_, created, target.model, body, target.spec)
            await self.apply_outcome_fault(request, fault, headers)
            ttft, per_token = self.latency(target.spec)
            if not stream:
                await pause(ttft + per_token * answer.completion_tokens)
                return json_response(200, builder.response("completed", answer, usage), headers)
            out = await SseStream.start(request, headers, buffered=ttft == 0 and per_token == 0)
            for event in builder.opening_events():
                await out.send(event)
            await pause(ttft + per_token * answer.reasoning_tokens)
            await self.stream_tokens(request, out, answer, fault, per_token, builder.delta_event)
            for event in builder.closing_events(answer, usage):
                await out.send(event)
            return await out.close()
        finally:
            self.release(target)

    async def embeddings(self, request: web.Request) -> web.StreamResponse:
        account, key = self.authenticate(request)
        body = await read_json(request)
        return await self._embeddings(request, account, key, body, body.get("model"))

    async def azure_embeddings(self, request: web.Request) -> web.StreamResponse:
        account, key = self.authenticate(request)
        model = self.azure_model(request)
        body = await read_json(request)
        return await self._embeddings(request, account, key, body, model)

    async def _embeddings(
        self, request: web.Request, account: Account, key: ApiKey, body: dict[str, Any], model: Any
    ) -> web.StreamResponse:
        target = self.target(account, key, model, "embedding")
        raw = body.get("input")
        if raw in (None, "", []):
            raise ApiError(400, errors.missing_parameter("input"))
        inputs = (
            [raw]
            if isinstance(raw, str) or (isinstance(raw, list) and raw and isinstance(raw[0], int))
            else list(raw)
            if isinstance(raw, list)
            else None
        )
        if inputs is None:
            raise ApiError(
                400,
                errors.invalid_request(
                    "'input' must be a string, a list of strings or token arrays.", "input", "invalid_type"
                ),
            )
        encoding = body.get("encoding_format") or "float"
        if encoding not in ("float", "base64"):
            raise ApiError(
                400,
                errors.invalid_request(
                    f"Invalid 'encoding_format': {encoding!r}; use 'float' or 'base64'.",
                    "encoding_format",
                    "invalid_value",
                ),
            )
        dimensions = body.get("dimensions") or target.spec.dimensions
        if not isinstance(dimensions, int) or not 1 <= dimensions <= target.spec.dimensions:
            raise ApiError(
                400,
                errors.invalid_request(
                    f"Invalid 'dimensions': expected an integer 1..{target.spec.dimensions}.",
                    "dimensions",
                    "invalid_value",
                ),
            )
        prompt = self.prompt_estimate(body, target.model)
        fault = self.admit(target, prompt, prompt, None, False, request.remote or "unknown")
        try:
            headers = self.rate_headers(target, fault)
            await self.apply_outcome_fault(request, fault, headers)
            await pause(self.latency(target.spec)[0])
            data = content.embeddings_response(
                target.model,
                inputs,
                self.config.seed,
                dimensions,
                encoding,
                self.prompt_tokens(body, target.model),
            )
            return json_response(200, data, headers)
        finally:
            self.release(target)

    async def list_models(self, request: web.Request) -> web.StreamResponse:
        account, _ = self.authenticate(request)
        data = [model_entry(name) for name in self.config.models if (account.name, name) in self.limiters]
        return json_response(200, {"object": "list", "data": data})

    async def get_model(self, request: web.Request) -> web.StreamResponse:
        account, _ = self.authenticate(request)
        name = request.match_info["model"]
        if (account.name, name) not in self.limiters:
            raise ApiError(404, errors.model_not_found(name))
        return json_response(200, model_entry(name))

    async def admin_stats(self, request: web.Request) -> web.StreamResponse:
        return json_response(200, self.stats())

    async def admin_timeline(self, request: web.Request) -> web.StreamResponse:
        return json_response(200, self.timeline.as_dict(self.clock()))

    async def admin_reset(self, request: web.Request) -> web.StreamResponse:
        try:
            options = loads_strict(await request.read()) if request.can_read_body else {}
        except ValueError:
            return json_response(400, {"error": 'body must be empty or JSON: {"buckets": true}'})
        buckets = bool(options.get("buckets")) if isinstance(options, dict) else False
        self.reset(buckets=buckets)
        return json_response(200, {"reset": True, "buckets": buckets})

    async def admin_get_faults(self, request: web.Request) -> web.StreamResponse:
        return json_response(200, {"faults": self.faults.describe()})

    async def admin_set_faults(self, request: web.Request) -> web.StreamResponse:
        try:
            payload = loads_strict(await request.read())
        except ValueError:
            return json_response(400, {"error": 'body must be JSON: {"faults": [...], "add": false}'})
        if isinstance(payload, dict):
            rules, add = payload.get("faults", []), bool(payload.get("add", False))
        else:
            rules, add = payload, False
        try:
            self.set_faults(rules, add=add)
        except EmulatorConfigError as exc:
            return json_response(400, {"error": str(exc)})
        return json_response(200, {"faults": self.faults.describe()})

    async def admin_clear_faults(self, request: web.Request) -> web.StreamResponse:
        self.faults.replace([])
        return json_response(200, {"faults": []})

    async def healthz(self, request: web.Request) -> web.StreamResponse:
        return web.Response(text="ok")

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self.error_middleware], client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self.chat_completions)
        app.router.add_post("/v1/responses", self.responses)
        app.router.add_post("/v1/embeddings", self.embeddings)
        app.router.add_get("/v1/models", self.list_models)
        app.router.add_get("/v1/models/{model}", self.get_model)
        app.router.add_post("/openai/deployments/{deployment}/chat/completions", self.azure_chat_completions)
        app.router.add_post("/openai/deployments/{deployment}/embeddings", self.azure_embeddings)
        app.router.add_get("/admin/stats", self.admin_stats)
        app.router.add_get("/admin/timeline", self.admin_timeline)
        app.router.add_post("/admin/reset", self.admin_reset)
        app.router.add_get("/admin/faults", self.admin_get_faults)
        app.router.add_post("/admin/faults", self.admin_set_faults)
        app.router.add_delete("/admin/faults", self.admin_clear_faults)
        app.router.add_get("/healthz", self.healthz)
        return app

    @web.middleware
    async def error_middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if not request.path.startswith("/admin/"):
            self.totals["requests"] += 1
        try:
            response: web.StreamResponse = await handler(request)
            return response
        except ApiError as exc:
            self.totals[str(exc.status)] += 1
            return json_response(exc.status, exc.body, exc.headers)
        except ConnectionResetError:  # the client went away mid-answer: nothing to answer
            raise asyncio.CancelledError from None
        except web.HTTPNotFound:
            return json_response(
                404,
                errors.invalid_request(f"Invalid URL ({request.method} {request.path})", None, "unknown_url"),
            )
        except web.HTTPMethodNotAllowed:
            return json_response(
                405,
                errors.invalid_request(
                    f"Method {request.method} not allowed on {request.path}", None, "method_not_allowed"
                ),
            )


def model_entry(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": FIXED_CREATED, "owned_by": "system"}


_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not JSON")


def loads_strict(raw: bytes) -> Any:
    """JSON as OpenAI reads it: no NaN or Infinity, no strings that are not Unicode (lone surrogate
    escapes); ``ValueError`` otherwise, also for numbers Python will not convert and deep nesting."""
    try:
        value = json.loads(raw, parse_constant=_no_constant)
    except RecursionError:
        raise ValueError("nested too deep") from None
    if _SURROGATE_ESCAPE.search(raw):
        json.dumps(value, ensure_ascii=False).encode()  # UnicodeEncodeError is a ValueError
    return value


async def read_json(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    try:
        body = loads_strict(raw)
    except ValueError:  # also UnicodeDecodeError / UnicodeEncodeError
        raise ApiError(400, errors.invalid_json()) from None
    if not isinstance(body, dict):
        raise ApiError(400, errors.invalid_request("The request body must be a JSON object."))
    return body


def json_response(status: int, body: Any, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status,
        body=json.dumps(body, separators=(",", ":")).encode(),
        content_type="application/json",
        headers=headers,
    )


class SseStream:
    """A server-sent-events answer. With no latency to model, events are gathered and sent in one
    write: the client sees the same bytes, at a fraction of the system calls."""

    def __init__(self, response: web.StreamResponse, buffered: bool) -> None:
        self.response = response
        self.buffered = buffered
        self.parts: list[bytes] = []

    @classmethod
    async def start(cls, request: web.Request, headers: dict[str, str], buffered: bool) -> SseStream:
        response = web.StreamResponse(
            status=200, headers={**headers, "Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        return cls(response, buffered)

    async def send(self, data: bytes) -> None:
        if self.buffered:
            self.parts.append(data)
        else:
            await self.response.write(data)

    async def flush(self) -> None:
        if self.parts:
            data = b"".join(self.parts)
            self.parts.clear()
            await self.response.write(data)

    async def close(self) -> web.StreamResponse:
        await self.flush()
        await self.response.write_eof()
        return self.response


async def pause(seconds: float) -> None:
    if seconds > 0:
        await asyncio.sleep(seconds)


def abort_connection(request: web.Request) -> None:
    """Drop the connection with a TCP reset (SO_LINGER 0), as a crashed upstream or proxy would."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    transport.abort()
