"""The emulator's HTTP routes: thin handlers that read a request, resolve its key and model on the
state (state.py), and hand completions to the one pipeline (completions.py); the admin endpoints; and
the middleware that turns every ``ApiError`` into OpenAI's error shape. ``app(emulator)`` serves it."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from o1emulator import content, errors
from o1emulator.completions import ChatRender, ResponsesRender, complete
from o1emulator.config import EmulatorConfigError
from o1emulator.sse import apply_outcome_fault, pause
from o1emulator.state import Emulator, Target
from o1emulator.wire import ApiError, json_response, loads_strict, model_entry, read_json


class Routes:
    def __init__(self, emu: Emulator) -> None:
        self.emu = emu

    # --- completions -------------------------------------------------------------------------------

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        account, key = self.emu.authenticate(request)
        body = await read_json(request)
        return await self._chat(request, self.emu.target(account, key, body.get("model"), "chat"), body)

    async def azure_chat_completions(self, request: web.Request) -> web.StreamResponse:
        account, key = self.emu.authenticate(request)
        model = self.azure_model(request)
        body = await read_json(request)
        return await self._chat(request, self.emu.target(account, key, model, "chat"), body)

    async def _chat(self, request: web.Request, target: Target, body: dict[str, Any]) -> web.StreamResponse:
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
        return await complete(self.emu, request, target, body, ChatRender, choices)

    async def responses(self, request: web.Request) -> web.StreamResponse:
        account, key = self.emu.authenticate(request)
        body = await read_json(request)
        target = self.emu.target(account, key, body.get("model"), "chat")
        if body.get("input") in (None, "", []):
            raise ApiError(400, errors.missing_parameter("input"))
        return await complete(self.emu, request, target, body, ResponsesRender)

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
        model = self.emu.config.deployments.get(deployment, deployment)
        if model not in self.emu.config.models:
            raise ApiError(404, errors.deployment_not_found(deployment))
        return model

    # --- embeddings --------------------------------------------------------------------------------

    async def embeddings(self, request: web.Request) -> web.StreamResponse:
        account, key = self.emu.authenticate(request)
        body = await read_json(request)
        return await self._embeddings(
            request, self.emu.target(account, key, body.get("model"), "embedding"), body
        )

    async def azure_embeddings(self, request: web.Request) -> web.StreamResponse:
        account, key = self.emu.authenticate(request)
        model = self.azure_model(request)
        body = await read_json(request)
        return await self._embeddings(request, self.emu.target(account, key, model, "embedding"), body)

    async def _embeddings(
        self, request: web.Request, target: Target, body: dict[str, Any]
    ) -> web.StreamResponse:
        inputs, encoding, dimensions = embedding_request(body, target.spec.dimensions)
        emu = self.emu
        prompt = emu.prompt_estimate(body, target.model)
        fault = emu.admit(target, prompt, prompt, None, False, request.remote or "unknown")
        try:
            headers = emu.rate_headers(target, fault)
            await apply_outcome_fault(request, fault, headers)
            await pause(emu.latency(target.spec)[0])
            usage = emu.prompt_tokens(body, target.model)
            data = content.embeddings_response(
                target.model, inputs, emu.config.seed, dimensions, encoding, usage
            )
            return json_response(200, data, headers)
        finally:
            emu.release(target)

    # --- models, admin, health ---------------------------------------------------------------------

    async def list_models(self, request: web.Request) -> web.StreamResponse:
        account, _ = self.emu.authenticate(request)
        names = [name for name in self.emu.config.models if (account.name, name) in self.emu.limiters]
        return json_response(200, {"object": "list", "data": [model_entry(name) for name in names]})

    async def get_model(self, request: web.Request) -> web.StreamResponse:
        account, _ = self.emu.authenticate(request)
        name = request.match_info["model"]
        if (account.name, name) not in self.emu.limiters:
            raise ApiError(404, errors.model_not_found(name))
        return json_response(200, model_entry(name))

    async def admin_stats(self, request: web.Request) -> web.StreamResponse:
        return json_response(200, self.emu.stats())

    async def admin_timeline(self, request: web.Request) -> web.StreamResponse:
        return json_response(200, self.emu.timeline.as_dict(self.emu.clock()))

    async def admin_reset(self, request: web.Request) -> web.StreamResponse:
        try:
            options = loads_strict(await request.read()) if request.can_read_body else {}
        except ValueError:
            return json_response(400, {"error": 'body must be empty or JSON: {"buckets": true}'})
        buckets = bool(options.get("buckets")) if isinstance(options, dict) else False
        self.emu.reset(buckets=buckets)
        return json_response(200, {"reset": True, "buckets": buckets})

    async def admin_get_faults(self, request: web.Request) -> web.StreamResponse:
        return json_response(200, {"faults": self.emu.faults.describe()})

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
            self.emu.set_faults(rules, add=add)
        except EmulatorConfigError as exc:
            return json_response(400, {"error": str(exc)})
        return json_response(200, {"faults": self.emu.faults.describe()})

    async def admin_clear_faults(self, request: web.Request) -> web.StreamResponse:
        self.emu.faults.replace([])
        return json_response(200, {"faults": []})

    async def healthz(self, request: web.Request) -> web.StreamResponse:
        return web.Response(text="ok")

    @web.middleware
    async def errors_as_json(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if not request.path.startswith("/admin/"):
            self.emu.totals["requests"] += 1
        try:
            response: web.StreamResponse = await handler(request)
            return response
        except ApiError as exc:
            self.emu.totals[str(exc.status)] += 1
            return json_response(exc.status, exc.body, exc.headers)
        except ConnectionResetError:  # the client went away mid-answer: nothing to answer
            raise asyncio.CancelledError from None
        except web.HTTPNotFound:
            unknown = errors.invalid_request(
                f"Invalid URL ({request.method} {request.path})", None, "unknown_url"
            )
            return json_response(404, unknown)
        except web.HTTPMethodNotAllowed:
            message = f"Method {request.method} not allowed on {request.path}"
            return json_response(405, errors.invalid_request(message, None, "method_not_allowed"))


def embedding_request(body: dict[str, Any], max_dimensions: int) -> tuple[list[Any], str, int]:
    """The inputs, encoding and dimensions an embeddings request asks for; ``ApiError`` 400 if invalid."""
    raw = body.get("input")
    if raw in (None, "", []):
        raise ApiError(400, errors.missing_parameter("input"))
    single = isinstance(raw, str) or (isinstance(raw, list) and raw and isinstance(raw[0], int))
    inputs = [raw] if single else list(raw) if isinstance(raw, list) else None
    if inputs is None:
        message = "'input' must be a string, a list of strings or token arrays."
        raise ApiError(400, errors.invalid_request(message, "input", "invalid_type"))
    encoding = body.get("encoding_format") or "float"
    if encoding not in ("float", "base64"):
        message = f"Invalid 'encoding_format': {encoding!r}; use 'float' or 'base64'."
        raise ApiError(400, errors.invalid_request(message, "encoding_format", "invalid_value"))
    dimensions = body.get("dimensions") or max_dimensions
    if not isinstance(dimensions, int) or not 1 <= dimensions <= max_dimensions:
        message = f"Invalid 'dimensions': expected an integer 1..{max_dimensions}."
        raise ApiError(400, errors.invalid_request(message, "dimensions", "invalid_value"))
    return inputs, encoding, dimensions


def app(emu: Emulator) -> web.Application:
    """The emulator's aiohttp application over ``emu``."""
    routes = Routes(emu)
    application = web.Application(middlewares=[routes.errors_as_json], client_max_size=64 * 1024 * 1024)
    add = application.router
    add.add_post("/v1/chat/completions", routes.chat_completions)
    add.add_post("/v1/responses", routes.responses)
    add.add_post("/v1/embeddings", routes.embeddings)
    add.add_get("/v1/models", routes.list_models)
    add.add_get("/v1/models/{model}", routes.get_model)
    add.add_post("/openai/deployments/{deployment}/chat/completions", routes.azure_chat_completions)
    add.add_post("/openai/deployments/{deployment}/embeddings", routes.azure_embeddings)
    add.add_get("/admin/stats", routes.admin_stats)
    add.add_get("/admin/timeline", routes.admin_timeline)
    add.add_post("/admin/reset", routes.admin_reset)
    add.add_get("/admin/faults", routes.admin_get_faults)
    add.add_post("/admin/faults", routes.admin_set_faults)
    add.add_delete("/admin/faults", routes.admin_clear_faults)
    add.add_get("/healthz", routes.healthz)
    return application
