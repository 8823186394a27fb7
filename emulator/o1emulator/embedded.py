"""Run the emulator inside another program: ``await start_emulator(...)`` in an event loop, or
``EmulatorThread`` for synchronous code. Both give the bound URL and direct access to stats and faults.
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from aiohttp import web

from o1emulator.config import EmulatorConfig, default_config
from o1emulator.server import app
from o1emulator.state import Clock, Emulator

ConfigSource = EmulatorConfig | dict[str, Any] | str | Path | None


def load_config(source: ConfigSource) -> EmulatorConfig:
    """An :class:`EmulatorConfig` from a model, a dict, a YAML path, or ``None`` (embedded default)."""
    if source is None:
        return default_config()
    if isinstance(source, EmulatorConfig):
        return source
    if isinstance(source, dict):
        return EmulatorConfig.from_dict(source)
    return EmulatorConfig.load(source)


class EmulatorHandle:
    """A running emulator: ``url`` (``http://host:port``), ``base_url`` (``url + "/v1"``), stats, faults."""

    def __init__(self, emulator: Emulator, runner: web.AppRunner, host: str, port: int) -> None:
        self.emulator = emulator
        self._runner = runner
        self.host = host
        self.port = port
        self.url = f"http://{host}:{port}"
        self.base_url = f"{self.url}/v1"

    @property
    def config(self) -> EmulatorConfig:
        return self.emulator.config

    def key(self, account: str | None = None, index: int = 0) -> str:
        """An API key of ``account`` (default: the first account) for clients in tests."""
        accounts = {a.name: a for a in self.config.accounts}
        if account is None:
            return self.config.accounts[0].keys[index].key
        if account not in accounts:
            raise KeyError(f"no account {account!r}; the config has {sorted(accounts)}")
        return accounts[account].keys[index].key

    def stats(self) -> dict[str, Any]:
        """The same JSON as ``GET /admin/stats``."""
        return self.emulator.stats()

    def reset(self, buckets: bool = False) -> None:
        """Zero counters (``POST /admin/reset``); ``buckets=True`` also refills every limit."""
        self.emulator.reset(buckets=buckets)

    def set_faults(self, faults: list[Any], add: bool = False) -> None:
        """Replace (or extend) the active fault rules; dicts as in the YAML ``faults`` list."""
        self.emulator.set_faults(faults, add=add)

    async def close(self) -> None:
        await self._runner.cleanup()

    async def __aenter__(self) -> EmulatorHandle:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


async def start_emulator(
    config: ConfigSource = None,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    clock: Clock | None = None,
) -> EmulatorHandle:
    """Serve an emulator on ``host:port`` (0 = a free port) in the running loop and return its handle."""
    emulator = Emulator(load_config(config), clock=clock or time.monotonic)
    runner = web.AppRunner(app(emulator), access_log=None, handler_cancellation=True, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=1024, reuse_address=True)
    await site.start()
    server = site._server
    assert server is not None and server.sockets  # type: ignore[attr-defined]
    bound_port = int(server.sockets[0].getsockname()[1])  # type: ignore[attr-defined]
    return EmulatorHandle(emulator, runner, host, bound_port)


class EmulatorThread:
    """An emulator on its own event loop in a daemon thread, for synchronous tests and scripts.

    >>> with EmulatorThread() as emu:
    ...     client = openai.OpenAI(base_url=emu.base_url, api_key=emu.key())
    """

    def __init__(
        self,
        config: ConfigSource = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        clock: Clock | None = None,
    ) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="o1emulator", daemon=True)
        self._thread.start()
        self.handle: EmulatorHandle = self._call(start_emulator(config, host=host, port=port, clock=clock))
        self.url = self.handle.url
        self.base_url = self.handle.base_url

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=30)

    async def _in_loop(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)

    def key(self, account: str | None = None, index: int = 0) -> str:
        return self.handle.key(account, index)

    def stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = self._call(self._in_loop(self.handle.stats))
        return stats

    def reset(self, buckets: bool = False) -> None:
        self._call(self._in_loop(self.handle.reset, buckets))

    def set_faults(self, faults: list[Any], add: bool = False) -> None:
        self._call(self._in_loop(self.handle.set_faults, faults, add))

    def close(self) -> None:
        if self._loop.is_closed():
            return
        self._call(self.handle.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def __enter__(self) -> EmulatorThread:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
