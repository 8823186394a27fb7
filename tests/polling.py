"""Waiting for a state, not for a time: one helper for every test that must let something happen.

Each polls a condition on the system's own state (counters, queue lengths, modes) and fails naming
what did not happen; the timeout only bounds a broken run, it is never what a test measures.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable

import pytest

Condition = Callable[[], bool | Awaitable[bool]]


async def until(condition: Condition, what: str, timeout_s: float = 10.0, every_s: float = 0.01) -> None:
    """Return once ``condition()`` (plain or async) holds; fail with ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = condition()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not happen within {timeout_s:.0f}s")
        await asyncio.sleep(every_s)


def eventually(
    condition: Callable[[], bool], what: str, timeout_s: float = 60.0, every_s: float = 0.25
) -> None:
    """``until`` for synchronous tests (the control-plane tests)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not happen within {timeout_s:.0f}s")
        time.sleep(every_s)


def clear_of_the_hour_boundary(margin_s: float = 120.0) -> None:
    """Wait for the next UTC hour when fewer than ``margin_s`` seconds of this one are left: a test of
    what holds "for the hour under way" must not see the hour change halfway."""
    left = 3600 - time.time() % 3600
    if left < margin_s:
        time.sleep(left + 1)
