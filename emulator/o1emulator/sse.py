"""Writing answers over time: server-sent events (buffered when there is no latency to model), pauses,
the answer's tokens in chunks, and the faults that strike a call after admission (5xx, hang, reset,
a stream cut part way)."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Callable

from aiohttp import web

from o1emulator import content, errors
from o1emulator.faults import FaultChoice
from o1emulator.wire import ApiError


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


async def stream_tokens(
    request: web.Request,
    out: SseStream,
    answer: content.Answer,
    fault: FaultChoice,
    per_token: float,
    chunk_tokens: int,
    encode: Callable[[str], bytes],
) -> None:
    """Send the answer's tokens in chunks; a ``cut_stream`` fault closes the connection part way."""
    cut_at = fault.outcome.after_tokens if fault.outcome and fault.outcome.kind == "cut_stream" else None
    tokens = answer.tokens
    for start in range(0, len(tokens), chunk_tokens):
        if cut_at is not None and start >= cut_at:
            break
        end = start + chunk_tokens if cut_at is None else min(start + chunk_tokens, cut_at)
        await pause(per_token * (end - start))
        await out.send(encode("".join(tokens[start:end])))
    if cut_at is not None:
        await out.flush()
        if request.transport is not None:
            request.transport.close()  # FIN, not RST: what was sent stays readable
        raise asyncio.CancelledError


async def apply_outcome_fault(request: web.Request, fault: FaultChoice, headers: dict[str, str]) -> None:
    """A fault chosen for an admitted call, before its answer: 5xx, a hang, or a reset connection."""
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
