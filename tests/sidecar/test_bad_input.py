"""Bad requests get an OpenAI-style error that says what was wrong and what to send instead."""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import zlib
from collections.abc import Iterator

import aiohttp
import openai
import pytest

from o1emulator.embedded import EmulatorHandle
from o1sidecar.app import SidecarHandle
from o1sidecar.httplog import SERVER_LOGGER, MalformedHttpFilter
from tests.sidecar.conftest import SidecarFactory

USER = [{"role": "user", "content": "hi"}]


async def post(url: str, data: bytes, headers: dict[str, str] | None = None) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as session:
        async with session.post(
            url, data=data, headers={"Content-Type": "application/json", **(headers or {})}
        ) as r:
            return r.status, await r.json()


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"{not json", "not valid JSON"),
        (b"", "empty"),
        (b"[1, 2]", "not an object"),
        (b'{"messages": [{"role": "user", "content": "x"}]}', "'model'"),
        (b'{"model": "o1"}', "'messages'"),
        (b'{"model": "o1", "messages": []}', "'messages'"),
        (b'{"model": "o1", "messages": ["hi"]}', "object with 'role'"),
        (b'{"model": "o1", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}', "'stream'"),
        (b"\xff\xfe{}", "UTF-8"),
    ],
)
async def test_malformed_body_is_400(
    sidecar: SidecarHandle, emulator: EmulatorHandle, data: bytes, words: str
) -> None:
    status, body = await post(f"{sidecar.url}/chat/completions", data)
    assert status == 400
    assert body["error"]["type"] == "invalid_request_error"
    assert words in body["error"]["message"]
    assert emulator.stats()["totals"].get("admitted", 0) == 0


async def test_missing_input_for_embeddings(sidecar: SidecarHandle) -> None:
    status, body = await post(f"{sidecar.url}/embeddings", b'{"model": "text-embedding-3-small"}')
    assert status == 400 and "'input'" in body["error"]["message"]


@pytest.mark.parametrize("value", ["urgent", "10", "-1", "5.5", "HIGHEST"])
async def test_bad_priority_header(sidecar: SidecarHandle, value: str) -> None:
    client = openai.AsyncOpenAI(base_url=sidecar.url, api_key="x", max_retries=0)
    with pytest.raises(openai.BadRequestError) as err:
        await client.chat.completions.create(
            model="o1", messages=USER, extra_headers={"x-o1pool-priority": value}
        )
    message = err.value.message
    assert "x-o1pool-priority" in message and "0-9" in message and "high" in message


@pytest.mark.parametrize("value", ["soon", "0", "-5", "1.5", "999999999"])
async def test_bad_deadline_header(sidecar: SidecarHandle, value: str) -> None:
    client = openai.AsyncOpenAI(base_url=sidecar.url, api_key="x", max_retries=0)
    with pytest.raises(openai.BadRequestError) as err:
        await client.chat.completions.create(
            model="o1", messages=USER, extra_headers={"x-o1pool-deadline-ms": value}
        )
    message = err.value.message
    assert "x-o1pool-deadline-ms" in message
    assert "between 1 and" in message or "at most 600000 ms" in message


@pytest.mark.parametrize("value", ["high", "LOW", "normal", "0", "9", "7"])
async def test_good_priority_values_are_served(sidecar: SidecarHandle, value: str) -> None:
    client = openai.AsyncOpenAI(base_url=sidecar.url, api_key="x", max_retries=0)
    completion = await client.chat.completions.create(
        model="o1", messages=USER, extra_headers={"x-o1pool-priority": value, "x-o1pool-deadline-ms": "5000"}
    )
    assert completion.choices


async def test_body_over_limit_is_413_by_content_length(
    make_sidecar: SidecarFactory, emulator: EmulatorHandle
) -> None:
    handle = await make_sidecar(max_body_bytes=2000)
    client = openai.AsyncOpenAI(base_url=handle.url, api_key="x", max_retries=0)
    with pytest.raises(openai.APIStatusError) as err:
        await client.chat.completions.create(model="o1", messages=[{"role": "user", "content": "x" * 5000}])
    assert err.value.status_code == 413
    assert "at most 2000 bytes" in err.value.message and "max_body_bytes" in err.value.message
    assert emulator.stats()["totals"].get("admitted", 0) == 0


async def test_body_over_limit_is_413_while_reading_chunked(make_sidecar: SidecarFactory) -> None:
    handle = await make_sidecar(max_body_bytes=2000)

    async def chunks():  # type: ignore[no-untyped-def]
        for _ in range(10):
            yield b"x" * 500

    async with aiohttp.ClientSession() as session:
        async with session.post(f"{handle.url}/chat/completions", data=chunks()) as r:
            assert r.status == 413
            assert "more than 2000" in (await r.json())["error"]["message"]


async def test_unknown_path_is_404(sidecar: SidecarHandle) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{sidecar.url}/completions", data=b"{}") as r:
            assert r.status == 404
            assert "/v1/chat/completions" in (await r.json())["error"]["message"]


async def test_app_authorization_is_ignored_and_never_forwarded(
    sidecar: SidecarHandle, emulator: EmulatorHandle
) -> None:
    client = openai.AsyncOpenAI(base_url=sidecar.url, api_key="sk-the-apps-own-fake-key", max_retries=0)
    completion = await client.chat.completions.create(model="o1", messages=USER)
    assert completion.choices
    assert emulator.stats()["accounts"]["acct-a"]["keys"]["a1"]["admitted"] == 1


START = b'{"model": "o1", "messages": [{"role": "user", "content": "x"'


@pytest.mark.parametrize(
    ("data", "words", "param"),
    [
        (
            b'{"model": "o1", "messages": [{"role": "user", "content": "x"}], "n": ' + b"9" * 5000 + b"}",
            "a number of 5000 characters",
            None,
        ),
        (START + b', "name": 1e' + b"9" * 200 + b"}]}", "a number of 202 characters", None),
        (b'{"model": "o1", "messages": [{"role": "user", "content": "x"}], "temperature": NaN}', "NaN", None),
        (START + b', "x": -Infinity}]}', "-Infinity", None),
        (
            b'{"model": "o1", "messages": [{"role": "user", "content": "a\\ud800b"}]}',
            "lone UTF-16 surrogate",
            "messages[0].content",
        ),
        (
            b'{"model": "o1", "messages": [{"role": "user", "content": "x"}], "\\udfff": 1}',
            "lone UTF-16",
            None,
        ),
        (
            b'{"model": "o1", "messages": [{"role": "user", "content": "x"}], "tools": '
            + b"[" * 100_000
            + b"]" * 100_000
            + b"}",
            "deeper than 64 levels",
            None,
        ),
        (
            b'{"model": "o1", "messages": [{"role": "user", "content": "x"}], "tools": '
            + b"[" * 65
            + b"]" * 65
            + b"}",
            "deeper than 64 levels at 'tools[0]",
            "tools" + "[0]" * 63,
        ),
        (
            b'{"model": "o1", "messages": [{"role": "user", "content": [{"type": ["text"]}]}]}',
            "'messages[0].content[0].type' must be a string, not a JSON array",
            "messages[0].content[0].type",
        ),
        (
            b'{"model": "o1", "messages": [{"role": {"r": 1}, "content": "x"}]}',
            "'messages[0].role' must be a string, not a JSON object",
            "messages[0].role",
        ),
    ],
)
async def test_hostile_json_is_400_naming_what_was_wrong(
    sidecar: SidecarHandle, emulator: EmulatorHandle, data: bytes, words: str, param: str | None
) -> None:
    status, body = await post(f"{sidecar.url}/chat/completions", data)
    assert status == 400, body
    assert words in body["error"]["message"]
    assert body["error"]["param"] == param
    assert emulator.stats()["totals"].get("admitted", 0) == 0


async def test_paired_surrogate_escapes_and_a_schema_type_list_are_fine(sidecar: SidecarHandle) -> None:
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": ["string", "null"]}}}]
    body = {"model": "o1", "messages": [{"role": "user", "content": "emoji \ud83d\ude00"}], "tools": tools}
    status, answer = await post(f"{sidecar.url}/chat/completions", json.dumps(body).encode())
    assert status == 200, answer


async def test_gzip_body_is_read_and_a_broken_one_is_400(sidecar: SidecarHandle) -> None:
    plain = json.dumps({"model": "o1", "messages": USER}).encode()
    status, answer = await post(
        f"{sidecar.url}/chat/completions", gzip.compress(plain), {"Content-Encoding": "gzip"}
    )
    assert status == 200 and answer["choices"]
    status, answer = await post(f"{sidecar.url}/chat/completions", plain, {"Content-Encoding": "gzip"})
    assert status == 400
    assert "could not be read as gzip" in answer["error"]["message"]


async def test_deflate_raw_or_wrapped_is_read_other_encodings_are_415_and_a_bomb_is_413(
    sidecar: SidecarHandle, emulator: EmulatorHandle
) -> None:
    plain = json.dumps({"model": "o1", "messages": USER}).encode()
    for body in (zlib.compress(plain), zlib.compress(plain)[2:-4]):  # zlib-wrapped, and raw deflate
        status, answer = await post(f"{sidecar.url}/chat/completions", body, {"Content-Encoding": "deflate"})
        assert status == 200 and answer["choices"]
    for encoding in ("br", "zstd", "gzip, br"):
        status, answer = await post(f"{sidecar.url}/chat/completions", plain, {"Content-Encoding": encoding})
        assert status == 415 and answer["error"]["code"] == "unsupported_content_encoding"
        assert repr(encoding) in answer["error"]["message"]
    before = emulator.stats()["totals"].get("admitted", 0)
    bomb = gzip.compress(b'{"model": "o1", "messages": [' + b" " * 200_000_000 + b"]}", compresslevel=9)
    assert len(bomb) < 1_000_000  # small on the wire, 200 MB decoded
    status, answer = await post(f"{sidecar.url}/chat/completions", bomb, {"Content-Encoding": "gzip"})
    assert status == 413 and "(decoded)" in answer["error"]["message"]
    assert emulator.stats()["totals"].get("admitted", 0) == before


async def test_a_body_that_never_ends_is_408(
    make_sidecar: SidecarFactory, emulator: EmulatorHandle, caplog: pytest.LogCaptureFixture
) -> None:
    handle = await make_sidecar(timeouts={"request_body_s": 0.5})
    reader, writer = await asyncio.open_connection("127.0.0.1", handle.port)
    writer.write(
        b'POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{"mod\r\n'
    )
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), timeout=10)  # the sidecar answers, then closes
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408")
    assert "timeouts.request_body_s" in json.loads(body)["error"]["message"]
    assert emulator.stats()["totals"].get("admitted", 0) == 0
    assert "Traceback" not in caplog.text


async def test_a_head_that_trickles_in_is_cut_off(
    make_sidecar: SidecarFactory, emulator: EmulatorHandle
) -> None:
    """Slowloris: a request head sent a byte at a time never completes; the connection is closed
    after ``timeouts.request_head_s``, while a normal client on another connection is served."""
    handle = await make_sidecar(timeouts={"request_head_s": 1.0})
    reader, writer = await asyncio.open_connection("127.0.0.1", handle.port)
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 200
    loop = asyncio.get_running_loop()
    started, closed_after = loop.time(), None
    for byte in head:
        try:
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(0.05)
            if reader.at_eof():
                raise ConnectionResetError
        except (ConnectionResetError, BrokenPipeError):
            closed_after = loop.time() - started
            break
    writer.close()
    assert closed_after is not None and closed_after < 3.0, closed_after
    client = openai.AsyncOpenAI(base_url=handle.url, api_key="x", max_retries=0)
    await client.chat.completions.create(model="o1", messages=[{"role": "user", "content": "still here?"}])


@pytest.fixture
def fresh_http_filter() -> Iterator[MalformedHttpFilter]:
    """A filter of its own on aiohttp's server logger (its pause is per process)."""
    logger = logging.getLogger(SERVER_LOGGER)
    before = list(logger.filters)
    for f in before:
        logger.removeFilter(f)
    mine = MalformedHttpFilter(interval_s=600)
    logger.addFilter(mine)
    yield mine
    logger.removeFilter(mine)
    for f in before:
        logger.addFilter(f)


async def test_malformed_http_is_one_warning_line_not_a_traceback(
    sidecar: SidecarHandle, caplog: pytest.LogCaptureFixture, fresh_http_filter: MalformedHttpFilter
) -> None:
    for _ in range(5):
        reader, writer = await asyncio.open_connection("127.0.0.1", sidecar.port)
        writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n")
        await writer.drain()
        assert b" 400 Bad Request" in (await asyncio.wait_for(reader.read(), timeout=10))[:40]
        writer.close()
    server = [r for r in caplog.records if r.name == "aiohttp.server"]
    assert len(server) == 1  # one line per 10 s, however many clients send junk
    assert server[0].levelname == "WARNING" and server[0].exc_info is None
    assert "malformed HTTP request refused with 400" in server[0].getMessage()
    assert fresh_http_filter.suppressed == 4  # counted, and said in the next line that is logged
