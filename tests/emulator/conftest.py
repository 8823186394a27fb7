"""Fixtures for emulator tests: a manual clock and emulators served in-process on free ports."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from o1emulator import EmulatorHandle, start_emulator


class ManualClock:
    """A monotonic clock that moves only when told to."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


KEY_A = "sk-test-account-a-1"
KEY_A2 = "sk-test-account-a-2"
KEY_B = "sk-test-account-b-1"


def small_config(**overrides: Any) -> dict[str, Any]:
    """Two accounts; o1 (reasoning) and gpt-4o with small, easy-to-count limits."""
    config: dict[str, Any] = {
        "models": {
            "o1": {
                "reasoning": True,
                "context_window": 200_000,
                "max_output_tokens": 100_000,
                "output_tokens": [8, 16],
                "reasoning_tokens": [32, 64],
            },
            "gpt-4o": {"context_window": 1000, "max_output_tokens": 500},
            "text-embedding-3-small": {"kind": "embedding", "context_window": 8191, "dimensions": 64},
        },
        "accounts": [
            {
                "name": "a",
                "organization": "org-a",
                "keys": [{"name": "a1", "key": KEY_A}, {"name": "a2", "key": KEY_A2}],
                "models": {
                    "o1": {"rpm": 6, "tpm": 100_000, "concurrency": 2},
                    "gpt-4o": {"rpm": 60, "tpm": 600},
                    "text-embedding-3-small": {"rpm": 100, "tpm": 100_000},
                },
            },
            {
                "name": "b",
                "keys": [{"name": "b1", "key": KEY_B}],
                "models": {"o1": {"rpm": 60, "tpm": 100_000}},
            },
        ],
    }
    config.update(overrides)
    return config


@pytest.fixture(scope="session")
def make_config() -> Any:
    """``small_config`` as a fixture, so test modules need not import conftest."""
    return small_config


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def emulator(clock: ManualClock) -> AsyncIterator[EmulatorHandle]:
    handle = await start_emulator(small_config(), clock=clock)
    yield handle
    await handle.close()
