"""One completion pipeline for chat completions and the Responses API (also Azure-addressed): the
budget, the charge and admission, the planned answer, faults, latency, and the answer whole or as a
stream. Chat and Responses differ only in how the answer is rendered (``ChatRender``,
``ResponsesRender``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from aiohttp import web

from o1emulator import content
from o1emulator.charge import requested_budget
from o1emulator.sse import SseStream, apply_outcome_fault, pause, stream_tokens
from o1emulator.state import Emulator, Target
from o1emulator.wire import json_response


class Render(Protocol):
    def whole(self) -> dict[str, Any]: ...

    def opening(self) -> list[bytes]: ...

    def delta(self, text: str) -> bytes: ...

    def closing(self) -> list[bytes]: ...


@dataclass(frozen=True)
class Planned:
    """One completion's answer, as planned before it is rendered."""

    body: dict[str, Any]
    target: Target
    answer: content.Answer
    prompt_tokens: int  # what usage reports
    choices: int
    ids: tuple[str, int]  # id, created


class ChatRender:
    prefix = "chatcmpl-"

    def __init__(self, p: Planned) -> None:
        self.answer, self.choices, self.model, self.ids = p.answer, p.choices, p.target.model, p.ids
        self.usage = content.chat_usage(p.prompt_tokens, p.answer, p.choices)
        options = p.body.get("stream_options")
        self.include_usage = isinstance(options, dict) and options.get("include_usage") is True
        self.writer = content.ChunkWriter(p.ids[0], p.ids[1], p.target.model, self.include_usage)

    def whole(self) -> dict[str, Any]:
        return content.chat_completion(*self.ids, self.model, self.answer, self.usage, self.choices)

    def opening(self) -> list[bytes]:
        return [self.writer.role()]

    def delta(self, text: str) -> bytes:
        return self.writer.content(text)

    def closing(self) -> list[bytes]:
        events = [self.writer.finish(self.answer.finish_reason)]
        if self.include_usage:
            events.append(self.writer.usage(self.usage))
        return [*events, content.DONE]


class ResponsesRender:
    prefix = "resp_"

    def __init__(self, p: Planned) -> None:
        self.answer = p.answer
        self.usage = content.response_usage(p.prompt_tokens, p.answer)
        self.builder = content.ResponseBuilder(p.ids[0], p.ids[1], p.target.model, p.body, p.target.spec)

    def whole(self) -> dict[str, Any]:
        return self.builder.response("completed", self.answer, self.usage)

    def opening(self) -> list[bytes]:
        return list(self.builder.opening_events())

    def delta(self, text: str) -> bytes:
        return self.builder.delta_event(text)

    def closing(self) -> list[bytes]:
        return list(self.builder.closing_events(self.answer, self.usage))


async def complete(
    emu: Emulator,
    request: web.Request,
    target: Target,
    body: dict[str, Any],
    kind: type[ChatRender] | type[ResponsesRender],
    choices: int = 1,
) -> web.StreamResponse:
    stream = body.get("stream") is True
    emu.check_budget(body)
    prompt, budget = emu.prompt_estimate(body, target.model), requested_budget(body)
    charge = emu.charge(prompt, budget, choices)
    fault = emu.admit(target, charge, prompt, budget, stream, request.remote or "unknown")
    try:
        headers = emu.rate_headers(target, fault)
        seed = content.request_seed(body, emu.config.seed)
        answer = content.plan_answer(seed, target.spec, budget)
        emu.count_completion(target, answer.completion_tokens * choices)
        ids = emu.new_ids(seed, kind.prefix)
        prompt_tokens = emu.prompt_tokens(body, target.model)
        render: Render = kind(Planned(body, target, answer, prompt_tokens, choices, ids))
        await apply_outcome_fault(request, fault, headers)
        ttft, per_token = emu.latency(target.spec)
        if not stream:
            await pause(ttft + per_token * answer.completion_tokens)
            return json_response(200, render.whole(), headers)
        out = await SseStream.start(request, headers, buffered=ttft == 0 and per_token == 0)
        for event in render.opening():
            await out.send(event)
        await pause(ttft + per_token * answer.reasoning_tokens)
        chunk = emu.config.stream_chunk_tokens
        await stream_tokens(request, out, answer, fault, per_token, chunk, render.delta)
        for event in render.closing():
            await out.send(event)
        return await out.close()
    finally:
        emu.release(target)
