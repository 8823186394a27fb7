"""Fixtures for the sidecar's tests: the project's emulator as the upstream, and sidecars in process
pointed at it with the real limiter (``build_limiter``)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from o1emulator.embedded import EmulatorHandle, start_emulator
from o1sidecar.app import SidecarHandle, start_sidecar
from o1sidecar.config import SidecarConfig

KEYS = {"acct-a": ["sk-emu-acct-a-key-1", "sk-emu-acct-a-key-2"], "acct-b": ["sk-emu-acct-b-key-1"]}
BIG = {"rpm": 10_000, "tpm": 50_000_000}

EMULATOR_CONFIG: dict[str, Any] = {
    "seed": 7,
    "models": {
        "o1": {"reasoning": True, "reasoning_tokens": [8, 16], "context_window": 200_000},
        "o1-mini": {
            "reasoning": True,
            "reasoning_tokens": [4, 8],
            "context_window": 2_000,
            "max_output_tokens": 1_000,
        },
        "gpt-4o": {"context_window": 128_000},
        "text-embedding-3-small": {"kind": "embedding", "context_window": 8191, "dimensions": 64},
    },
    "accounts": [
        {
            "name": name,
            "keys": [{"name": f"{name[-1]}{i + 1}", "key": key} for i, key in enumerate(keys)],
            "models": {m: BIG for m in ("o1", "o1-mini", "gpt-4o", "text-embedding-3-small")},
        }
        for name, keys in KEYS.items()
    ],
}


EmulatorFactory = Callable[..., Awaitable[EmulatorHandle]]


@pytest.fixture
async def make_emulator() -> AsyncIterator[EmulatorFactory]:
    """``await make_emulator(**overrides of EMULATOR_CONFIG)``; closed after the test."""
    started: list[EmulatorHandle] = []

    async def factory(**overrides: Any) -> EmulatorHandle:
        handle = await start_emulator(merge(EMULATOR_CONFIG, overrides))
        started.append(handle)
        return handle

    yield factory
    for handle in started:
        await handle.close()


@pytest.fixture
async def emulator(make_emulator: EmulatorFactory) -> EmulatorHandle:
    return await make_emulator()


def sidecar_config_dict(
    emulator: EmulatorHandle,
    accounts: tuple[str, ...] = ("acct-a",),
    limits: dict[str, dict[str, int]] | None = None,
) -> dict[str, Any]:
    """A sidecar config for the emulator's accounts; keys come from env vars O1T_<ACCOUNT>_<N>.
    ``limits`` (model -> rpm/tpm/concurrency) replaces what the sidecar believes each account has."""
    return {
        "pool": {"name": "test", "namespace": "tests"},
        "listen": {"host": "127.0.0.1", "port": 0},
        "metrics": {"host": "127.0.0.1", "port": 0},
        "accounts": [
            {
                "name": name,
                "base_url": emulator.base_url,
                "keys": [
                    {"name": f"{name[-1]}{i + 1}", "env": f"O1T_{name[-1].upper()}_{i + 1}"}
                    for i in range(len(KEYS[name]))
                ],
                "models": limits or {m: BIG for m in ("o1", "o1-mini", "gpt-4o", "text-embedding-3-small")},
            }
            for name in accounts
        ],
        "retry": {"max_attempts": 3, "backoff_base_s": 0.01},
    }


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        out[key] = (
            merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
        )
    return out


SidecarFactory = Callable[..., Awaitable[SidecarHandle]]


@pytest.fixture
def key_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, keys in KEYS.items():
        for i, key in enumerate(keys):
            monkeypatch.setenv(f"O1T_{name[-1].upper()}_{i + 1}", key)


@pytest.fixture
async def make_sidecar(emulator: EmulatorHandle, key_env: None) -> AsyncIterator[SidecarFactory]:
    """``await make_sidecar(**config overrides)`` starts a sidecar on the emulator; closed after the test."""
    started: list[SidecarHandle] = []

    async def factory(
        accounts: tuple[str, ...] = ("acct-a",),
        upstream: EmulatorHandle | None = None,
        limits: dict[str, dict[str, int]] | None = None,
        **overrides: Any,
    ) -> SidecarHandle:
        base = sidecar_config_dict(upstream or emulator, accounts, limits)
        config = SidecarConfig.from_dict(merge(base, overrides))
        handle = await start_sidecar(config)
        started.append(handle)
        return handle

    yield factory
    for handle in started:
        await handle.close()


@pytest.fixture
async def sidecar(make_sidecar: SidecarFactory) -> SidecarHandle:
    return await make_sidecar()


async def one_call_at_a_time(make_emulator: EmulatorFactory) -> EmulatorHandle:
    """An upstream whose one account takes one o1 call at a time (400 ms each) and answers any other
    with 429, retry-after 0.2 s: whatever the sidecar's config believes."""
    return await make_emulator(
        latency_scale=1.0,
        concurrency_retry_after_s=0.2,
        models={"o1": {"latency": {"ttft_ms": 400}}},
        accounts=[
            {
                "name": "acct-a",
                "keys": [
                    {"name": "a1", "key": "sk-emu-acct-a-key-1"},
                    {"name": "a2", "key": "sk-emu-acct-a-key-2"},
                ],
                "models": {"o1": {"rpm": 10_000, "tpm": 50_000_000, "concurrency": 1}},
            },
        ],
    )
