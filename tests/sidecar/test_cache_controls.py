"""Per-request cache controls through a real sidecar, the openai SDK and the emulator (whose own
counters say when the model was called): bypass, refresh, only, and Cache-Control."""

from __future__ import annotations

import openai
import pytest

from o1emulator.embedded import EmulatorHandle
from tests.sidecar.conftest import SidecarFactory


async def test_bypass_refresh_only_and_no_store(
    make_sidecar: SidecarFactory, emulator: EmulatorHandle
) -> None:
    handle = await make_sidecar()
    client = openai.AsyncOpenAI(base_url=handle.url, api_key="x", max_retries=0)

    def calls() -> int:
        return int(emulator.stats()["totals"].get("admitted", 0))

    async def ask(question: str, **headers: str) -> tuple[str, str]:
        raw = await client.chat.completions.with_raw_response.create(
            model="o1", messages=[{"role": "user", "content": question}], extra_headers=headers
        )
        return raw.headers["x-o1pool-cache"], raw.parse().choices[0].message.content or ""

    first = await ask("What is 2+2?")
    assert first[0] == "miss" and calls() == 1
    assert (await ask("What is 2+2?"))[0] == "l1" and calls() == 1  # the default: answered from cache
    assert (await ask("What is 2+2?", **{"x-o1pool-cache-mode": "bypass"}))[0] == "miss" and calls() == 2
    assert (await ask("What is 2+2?", **{"cache-control": "no-cache"}))[0] == "miss" and calls() == 3
    assert (await ask("What is 2+2?", **{"x-o1pool-cache-mode": "only"}))[0] == "l1" and calls() == 3

    # Nothing stored for a question asked with no-store or bypass: asking for a cached answer only is a
    # 504 cache_miss, and the model is not called.
    assert (await ask("Name a prime.", **{"cache-control": "no-store"}))[0] == "miss"
    assert (await ask("Name a color.", **{"x-o1pool-cache-mode": "bypass"}))[0] == "miss"
    before = calls()
    for question in ("Name a prime.", "Name a color.", "Never asked?"):
        with pytest.raises(openai.APIStatusError) as err:
            await ask(question, **{"cache-control": "only-if-cached"})
        assert err.value.status_code == 504 and err.value.code == "cache_miss"
        assert "the model was not called" in err.value.message
    assert calls() == before
    # refresh: a fresh answer, and it is the one stored.
    assert (await ask("Name a color.", **{"x-o1pool-cache-mode": "refresh"}))[0] == "miss"
    assert (await ask("Name a color.", **{"x-o1pool-cache-mode": "only"}))[0] == "l1"

    with pytest.raises(openai.BadRequestError) as bad:
        await ask("What is 2+2?", **{"x-o1pool-cache-mode": "maybe"})
    assert bad.value.param == "x-o1pool-cache-mode" and "bypass" in bad.value.message
