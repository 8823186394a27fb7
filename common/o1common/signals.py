"""Running a server process until the signal that stops it."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar


class Closable(Protocol):
    async def close(self) -> None: ...


Server = TypeVar("Server", bound=Closable)


async def until_stopped() -> None:
    """Return on the first SIGINT or SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def serve_until_stopped(
    start: Callable[[], Awaitable[Server]], banner: Callable[[Server], str]
) -> None:
    """Start a server, print ``banner(server)``, and close it on SIGINT or SIGTERM."""
    server = await start()
    print(banner(server), flush=True)
    try:
        await until_stopped()
    finally:
        await server.close()
