"""Reading and checking what the app sent: size limit, JSON, and the fields each endpoint needs."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from o1sidecar.errors import ProxyError, bad_request

# Read and discard up to this much of an oversized body, so the client gets to read the 413.
DRAIN_LIMIT_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class Endpoint:
    """An OpenAI endpoint the sidecar proxies: its path below ``/v1`` and the field holding the prompt."""

    path: str
    prompt_field: str
    streams: bool


CHAT = Endpoint("chat/completions", "messages", streams=True)
RESPONSES = Endpoint("responses", "input", streams=True)
EMBEDDINGS = Endpoint("embeddings", "input", streams=False)


def _too_large(size: int | str, limit: int) -> ProxyError:
    return ProxyError(
        413,
        f"Request body is {size} bytes; this pool accepts at most {limit} bytes (max_body_bytes in the "
        "sidecar config). Send fewer or shorter messages, or raise the limit in the O1Pool.",
        code="request_too_large",
    )


async def read_body(request: web.Request, limit: int) -> bytes:
    """The whole body, or 413 when it is over ``limit`` (by Content-Length or while reading)."""
    declared = request.content_length
    if declared is not None and declared > limit:
        await _drain(request, declared)
        raise _too_large(declared, limit)
    if declared is not None:
        # One read of the announced size (already checked); a client that sends less gets a 400.
        try:
            return await request.content.readexactly(declared) if declared else b""
        except asyncio.IncompleteReadError as exc:
            raise bad_request(
                f"Request body ended after {len(exc.partial)} of the {declared} bytes its Content-Length "
                "announced; send the whole body."
            ) from None
    data = bytearray()
    async for chunk in request.content.iter_chunked(64 * 1024):
        data += chunk
        if len(data) > limit:
            await _drain(request, len(data))
            raise _too_large(f"more than {limit}", limit)
    return bytes(data)


async def _drain(request: web.Request, size: int) -> None:
    if size > DRAIN_LIMIT_BYTES:
        return
    while await request.content.readany():
        pass


def parse_body(raw: bytes, endpoint: Endpoint) -> dict[str, Any]:
    """The request as a JSON object with a ``model`` and the endpoint's prompt field; 400 otherwise."""
    if not raw.strip():
        raise bad_request(
            f"Request body is empty; send a JSON object with 'model' and '{endpoint.prompt_field}'."
        )
    try:
        body = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise bad_request("Request body is not UTF-8 encoded JSON; send UTF-8 JSON.") from None
    except json.JSONDecodeError as exc:
        raise bad_request(
            f"Request body is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}); "
            f"send a JSON object with 'model' and '{endpoint.prompt_field}'."
        ) from None
    if not isinstance(body, dict):
        raise bad_request(
            f"Request body is a JSON {type(body).__name__}, not an object; send a JSON object with 'model' "
            f"and '{endpoint.prompt_field}'."
        )
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad_request("Missing required parameter: 'model' (a model name string).", param="model")
    prompt = body.get(endpoint.prompt_field)
    if endpoint is CHAT:
        if not isinstance(prompt, list) or not prompt:
            raise bad_request(
                "Missing required parameter: 'messages' (a non-empty list of message objects).",
                param="messages",
            )
        if not all(isinstance(m, dict) for m in prompt):
            raise bad_request(
                "Every entry of 'messages' must be an object with 'role' and 'content'.", param="messages"
            )
    elif prompt is None or prompt == "" or prompt == []:
        field = endpoint.prompt_field
        raise bad_request(f"Missing required parameter: '{field}'.", param=field)
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise bad_request("'stream' must be true or false.", param="stream")
    if stream and not endpoint.streams:
        raise bad_request(f"/v1/{endpoint.path} does not stream; drop 'stream'.", param="stream")
    return body
