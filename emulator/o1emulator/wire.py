"""The emulator's HTTP surface in JSON: error answers raised anywhere and turned into responses, bodies
read as strictly as OpenAI reads them, and JSON answers."""

from __future__ import annotations

import json
import re
from typing import Any

from aiohttp import web

from o1emulator import errors

FIXED_CREATED = 1_735_689_600  # 2025-01-01T00:00:00Z: "created" of every answer when a seed is set


class ApiError(Exception):
    """An OpenAI-style error answer; raised inside handlers, turned into a JSON response."""

    def __init__(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        super().__init__(body["error"]["message"])
        self.status = status
        self.body = body
        self.headers = headers or {}


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
