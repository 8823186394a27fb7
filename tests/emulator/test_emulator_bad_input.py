"""Whatever JSON a client sends, the answer is a clear OpenAI-style error or a valid answer, never a crash."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from urllib.error import HTTPError
from urllib.request import Request, urlopen

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from o1emulator import EmulatorThread

KEY = "sk-test-account-a-1"
PATHS = ["/v1/chat/completions", "/v1/responses", "/v1/embeddings"]

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 10**6), st.floats(allow_nan=False), st.text(max_size=30)
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
message = st.fixed_dictionaries({"role": st.sampled_from(["user", "system", 3]), "content": values})
bodies = st.fixed_dictionaries(
    {"model": st.sampled_from(["o1", "gpt-4o", "text-embedding-3-small", "nope", 7])},
    optional={
        "messages": st.one_of(st.lists(message, max_size=3), values),
        "input": values,
        "instructions": values,
        "max_tokens": values,
        "max_completion_tokens": st.integers(-2, 300),
        "max_output_tokens": values,
        "n": values,
        "stream": st.booleans() | values,
        "stream_options": values,
        "dimensions": values,
        "encoding_format": values,
    },
)


@pytest.fixture(scope="module")
def emu(make_config: Any) -> Iterator[EmulatorThread]:
    config = make_config()
    for model in config["accounts"][0]["models"].values():
        model.update(rpm=10**6, tpm=10**9)
    with EmulatorThread(config) as emulator:
        yield emulator


def post(url: str, payload: bytes) -> tuple[int, bytes]:
    request = Request(url, data=payload, headers={"Authorization": f"Bearer {KEY}"})
    try:
        with urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except HTTPError as exc:
        return exc.code, exc.read()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.sampled_from(PATHS), body=bodies)
def test_random_bodies_get_an_answer_or_a_clear_error(
    emu: EmulatorThread, path: str, body: dict[str, Any]
) -> None:
    status, raw = post(emu.url + path, json.dumps(body).encode())
    assert status in {200, 400, 404}, raw[:300]
    if status != 200:
        error = json.loads(raw)["error"]
        assert error["message"] and error["type"] == "invalid_request_error"
    elif body.get("stream") is True and path != "/v1/embeddings":
        assert raw.startswith(b"data: ") or raw.startswith(b"event: ")
    else:
        json.loads(raw)


HOSTILE = [
    b'{"model": "o1", "messages": [{"role": "user", "content": "x"}], "n": ' + b"9" * 5000 + b"}",
    b'{"model": "o1", "messages": [{"role": "user", "content": "x"}], "tools": '
    + b"[" * 50_000
    + b"]" * 50_000
    + b"}",
    b'{"model": "o1", "messages": [{"role": "user", "content": "\\ud800"}]}',
    b'{"model": "o1", "messages": [{"role": "user", "content": "x"}], "temperature": NaN}',
]


@pytest.mark.parametrize("payload", [b"", b"[1, 2]", b"\xff\xfe", b'"text"', b"{", *HOSTILE])
def test_non_object_bodies(emu: EmulatorThread, payload: bytes) -> None:
    status, raw = post(emu.url + "/v1/chat/completions", payload)
    assert status == 400 and json.loads(raw)["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize("path", ["/admin/faults", "/admin/reset"])
@pytest.mark.parametrize("payload", HOSTILE)
def test_admin_endpoints_are_as_strict(emu: EmulatorThread, path: str, payload: bytes) -> None:
    status, raw = post(emu.url + path, payload)
    assert status == 400 and "must be" in json.loads(raw)["error"]


def test_unknown_path_and_method(emu: EmulatorThread) -> None:
    status, raw = post(emu.url + "/v1/nothing", b"{}")
    assert status == 404 and "Invalid URL" in json.loads(raw)["error"]["message"]
    with pytest.raises(HTTPError) as caught:
        urlopen(emu.url + "/v1/chat/completions", timeout=10)
    assert caught.value.code == 405
