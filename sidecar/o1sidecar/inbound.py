"""Reading and checking what the app sent, before anything else touches it: the body's size and how
long it may take to arrive, then JSON bounded in depth, number length and string validity, then the
fields each endpoint needs. Every failure is an OpenAI-style 400 (413, 408) that names what was wrong.
"""

from __future__ import annotations

import asyncio
import json
import re
import zlib
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from o1sidecar.errors import ProxyError, bad_request

# Read and discard up to this much of an oversized body, so the client gets to read the 413.
DRAIN_LIMIT_BYTES = 64 * 1024 * 1024
# Content-Encoding -> zlib window bits. The server does not decode bodies itself (auto_decompress
# off): these are decoded here, bounded by max_body_bytes after decoding; others are a 415.
DECODED = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}
IDENTITY = ("", "identity")
# Deeper JSON than any OpenAI request needs (a tool's JSON schema nests a few levels per property).
MAX_DEPTH = 64
# Longer numbers than any parameter needs; Python refuses to convert integers over 4,300 digits.
MAX_NUMBER_CHARS = 100
# A \\uD800-\\uDFFF escape in the raw JSON: only these can make a string that is not valid Unicode.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
# A run of digits longer than that: only then are numbers checked one by one while parsing.
_LONG_DIGITS = re.compile(rb"[0-9]{%d}" % (MAX_NUMBER_CHARS + 1))
# Such a run covers two bytes _STRIDE apart at multiples of _STRIDE, and the _STRIDE + 1 bytes from the
# first of them: a few samples of the body find every place one may start (has_long_digits).
_STRIDE = (MAX_NUMBER_CHARS + 1) // 2
_DIGIT_FLAGS = bytes(1 if 0x30 <= b <= 0x39 else 0 for b in range(256))


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


async def read_body(request: web.Request, limit: int, timeout_s: float) -> bytes:
    """The whole body (gzip or deflate bodies decoded), 413 when it is over ``limit`` (by
    Content-Length, while reading, or once decoded), 408 when it has not all arrived within
    ``timeout_s``, 400 when it is cut short or its encoding is broken, 415 for other encodings."""
    encoding = request.headers.get("Content-Encoding", "").strip().lower()
    if encoding not in IDENTITY and encoding not in DECODED:
        raise ProxyError(
            415,
            f"Content-Encoding {encoding!r} is not supported; send plain JSON, or gzip- or deflate-encoded "
            "JSON.",
            code="unsupported_content_encoding",
        )
    try:
        if request.content.is_eof():  # (it came whole with the head, as most do: nothing to wait for)
            raw = await _read(request, limit)
        else:
            async with asyncio.timeout(timeout_s):
                raw = await _read(request, limit)
    except TimeoutError:
        request.content.feed_eof()  # the rest is not waited for: answer, then close the connection
        raise ProxyError(
            408,
            f"The request body did not arrive within {timeout_s:g} s (timeouts.request_body_s in the "
            "sidecar config); send the whole body at once, and end a chunked body with its last chunk.",
            code="request_timeout",
            close_connection=True,
        ) from None
    except web.RequestPayloadError:  # broken chunk framing
        request.content.feed_eof()  # nothing more can be read: answer, then close the connection
        raise ProxyError(
            400,
            "The request body could not be read (broken chunked encoding); send plain JSON.",
            close_connection=True,
        ) from None
    return raw if encoding in IDENTITY else _decode(raw, encoding, limit)


def _decode(raw: bytes, encoding: str, limit: int) -> bytes:
    """``raw`` decoded, producing at most ``limit`` + 1 bytes (a small bomb stays small): 413 past
    ``limit``, 400 when it is not one whole stream of ``encoding``."""
    decoder = zlib.decompressobj(DECODED[encoding])
    try:
        data = decoder.decompress(raw, limit + 1)
    except zlib.error:
        if encoding != "deflate":
            data, broken = b"", True
        else:  # some clients send raw deflate, without the zlib wrapper the standard asks for
            return _decode_raw_deflate(raw, limit)
    else:
        broken = not decoder.eof
    if len(data) > limit:
        raise _too_large(f"more than {limit} (decoded)", limit)
    if broken or decoder.unused_data.strip():
        raise ProxyError(
            400,
            f"The request body could not be read as {encoding}; send plain JSON or valid {encoding}-encoded "
            "JSON with a matching Content-Encoding.",
        )
    return data


def _decode_raw_deflate(raw: bytes, limit: int) -> bytes:
    decoder = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        data = decoder.decompress(raw, limit + 1)
    except zlib.error:
        data = b""
    if len(data) > limit:
        raise _too_large(f"more than {limit} (decoded)", limit)
    if not decoder.eof:
        raise ProxyError(
            400,
            "The request body could not be read as deflate; send plain JSON or valid deflate-encoded JSON "
            "with a matching Content-Encoding.",
        )
    return data


async def _read(request: web.Request, limit: int) -> bytes:
    declared = request.content_length
    if declared is not None and declared > limit:
        await _drain(request, declared)
        raise _too_large(declared, limit)
    if declared is not None and "Content-Encoding" not in request.headers:
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


def discard_unread_body(timeout_s: float) -> Any:
    """Middleware: when an answer is given without reading the whole body (a bad header, an unknown
    path), read the rest first, at most ``DRAIN_LIMIT_BYTES`` within ``timeout_s``, so the client can
    read the answer; a body that cannot be read (broken gzip, too slow) closes the connection
    instead of ending in a traceback."""

    @web.middleware
    async def middleware(request: web.Request, handler: Any) -> web.StreamResponse:
        try:
            response: web.StreamResponse = await handler(request)
        except web.HTTPException as exc:
            if await _discarded(request, timeout_s):
                raise
            exc.force_close()
            raise
        if not await _discarded(request, timeout_s):
            response.force_close()
        return response

    return middleware


async def _discarded(request: web.Request, timeout_s: float) -> bool:
    """Whether the rest of the body (if any) was read and thrown away."""
    if not request.body_exists or request.content.is_eof():
        return True
    read = 0
    try:
        async with asyncio.timeout(timeout_s):
            while chunk := await request.content.readany():
                read += len(chunk)
                if read > DRAIN_LIMIT_BYTES:
                    break
            else:
                return True
    except (TimeoutError, web.RequestPayloadError):
        pass
    request.content.feed_eof()
    return False


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
    body = _load_json(raw, endpoint)
    check_strings = _SURROGATE_ESCAPE.search(raw) is not None
    if check_strings or raw.count(b"[") + raw.count(b"{") > MAX_DEPTH:  # else it cannot be too deep
        _check_tree(body, check_strings=check_strings)
    if not isinstance(body, dict):
        raise bad_request(
            f"Request body is a JSON {_kind(body)}, not an object; send a JSON object with 'model' "
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
    _check_kinds(prompt, endpoint.prompt_field)
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise bad_request("'stream' must be true or false.", param="stream")
    if stream and not endpoint.streams:
        raise bad_request(f"/v1/{endpoint.path} does not stream; drop 'stream'.", param="stream")
    return body


class _BadNumber(ValueError):
    pass


def _number(kind: type[int] | type[float]) -> Any:
    def parse(text: str) -> int | float:
        if len(text) > MAX_NUMBER_CHARS:
            raise _BadNumber(f"a number of {len(text)} characters (at most {MAX_NUMBER_CHARS})")
        return kind(text)

    return parse


def _no_constant(name: str) -> float:
    raise _BadNumber(f"{name}, which is not a JSON number")


def _load_json(raw: bytes, endpoint: Endpoint) -> Any:
    hint = f"send a JSON object with 'model' and '{endpoint.prompt_field}'"
    # Per-number hooks cost a call per number, so only a body with a long digit run pays for them.
    hooks = {"parse_int": _number(int), "parse_float": _number(float)} if has_long_digits(raw) else {}
    try:
        return json.loads(raw.decode("utf-8"), parse_constant=_no_constant, **hooks)
    except UnicodeDecodeError:
        raise bad_request("Request body is not UTF-8 encoded JSON; send UTF-8 JSON.") from None
    except json.JSONDecodeError as exc:
        raise bad_request(
            f"Request body is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}); {hint}."
        ) from None
    except _BadNumber as exc:
        raise bad_request(f"Request body holds {exc}; send numbers a parameter can take.") from None
    except RecursionError:
        raise bad_request(f"Request body nests deeper than {MAX_DEPTH} levels; {hint}.") from None


def has_long_digits(raw: bytes) -> bool:
    """Whether ``raw`` holds a run of more than ``MAX_NUMBER_CHARS`` digits; as ``_LONG_DIGITS.search``,
    which takes a few milliseconds on a 100 kB body, but only where every byte ``_STRIDE`` apart and
    its next ``_STRIDE`` are digits (a run that long has such a place)."""
    sampled = raw[::_STRIDE].translate(_DIGIT_FLAGS)
    at = sampled.find(b"\x01\x01")
    while at >= 0:
        start = at * _STRIDE
        if raw[start : start + _STRIDE + 1].isdigit():
            return _LONG_DIGITS.search(raw) is not None
        at = sampled.find(b"\x01\x01", at + 1)
    return False


def _check_tree(body: Any, *, check_strings: bool) -> None:
    """400 when ``body`` nests deeper than ``MAX_DEPTH`` or (``check_strings``) holds a string that
    is not valid Unicode (a lone UTF-16 surrogate escape). One pass, no recursion."""
    if not isinstance(body, dict | list):
        return
    stack: list[tuple[dict[str, Any] | list[Any], tuple[str | int, ...]]] = [(body, ())]
    while stack:
        value, path = stack.pop()
        if len(path) >= MAX_DEPTH:
            where = _dotted(path)
            raise bad_request(
                f"Request body nests deeper than {MAX_DEPTH} levels at '{where}'; flatten it.", param=where
            )
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, item in items:
            if check_strings and isinstance(key, str):
                _check_string(key, _dotted(path), is_key=True)
            if isinstance(item, dict | list):
                stack.append((item, (*path, key)))
            elif check_strings and isinstance(item, str):
                _check_string(item, _dotted((*path, key)))


def _dotted(path: tuple[str | int, ...]) -> str:
    """``messages[0].content`` from ``("messages", 0, "content")``."""
    return "".join(f"[{k}]" if isinstance(k, int) else f".{k}" for k in path).lstrip(".")


def _check_string(text: str, path: str, *, is_key: bool = False) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        what = f"A key of '{path}'" if is_key and path else "A key of the body" if is_key else f"'{path}'"
        raise bad_request(
            f"{what} holds a lone UTF-16 surrogate escape (\\uD800-\\uDFFF without its pair), which is "
            "not text; send valid Unicode.",
            param=path or None,
        ) from None


def _check_kinds(prompt: Any, field: str) -> None:
    """Every ``role`` and ``type`` in the prompt (messages, input items, content parts) is a string,
    as in OpenAI's schema."""
    stack: list[tuple[Any, str]] = [(prompt, field)]
    while stack:
        value, path = stack.pop()
        if isinstance(value, list):
            stack.extend((item, f"{path}[{i}]") for i, item in enumerate(value))
        elif isinstance(value, dict):
            for key in ("role", "type"):
                if key in value and not isinstance(value[key], str):
                    raise bad_request(
                        f"'{path}.{key}' must be a string, not a JSON {_kind(value[key])}.",
                        param=f"{path}.{key}",
                    )
            for key in ("content",):
                if key in value:
                    stack.append((value[key], f"{path}.{key}"))


def _kind(value: Any) -> str:
    """The JSON name of a decoded value's type."""
    kinds = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    return kinds.get(type(value), "number")
