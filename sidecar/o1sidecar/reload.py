"""Config changes without a restart: when the config file changes, a sidecar with the new config
takes over on the same ports.

The kubelet updates a mounted ConfigMap by pointing a symlink (``..data``) at a new directory, within
about a minute of the change (the operator re-renders the ConfigMap on every change of the pool's
spec). Every ``CONFIG_CHECK_S`` this stats the file; when it changed and holds a different valid
config whose keys can be read, a sidecar with that config starts on the same ports (both listen for a
moment: ``SO_REUSEPORT``) and the old one then closes exactly as on SIGTERM: new connections go to
the new one at once, calls in flight finish (``shutdown.grace_s``), requests still waiting in the old
one's queue after ``shutdown.queue_s`` are handed back (429 with ``retry-after``). What the pool
shares through Redis (limits, queue, refused keys, outages, the L2 cache) carries over; the metrics
and the in-process cache start afresh. A changed file that is not a valid config leaves the running
sidecar as it is, with an error naming the field and ``o1_api_config_rejections_total``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

from o1common.signals import until_stopped
from o1sidecar.app import SidecarHandle, start_sidecar
from o1sidecar.config import ConfigError, SidecarConfig
from o1sidecar.keyfiles import file_stamp

log = logging.getLogger("o1sidecar.reload")

CONFIG_CHECK_S = 5.0


async def serve_reloading(
    path: Path, config: SidecarConfig, banner: Callable[[SidecarHandle], str], every_s: float = CONFIG_CHECK_S
) -> None:
    """Serve ``config`` (read from ``path``) until SIGINT or SIGTERM, taking up each valid change."""
    handle = await start_sidecar(config, reuse_port=True)
    print(banner(handle), flush=True)
    stamp = file_stamp(path)
    stopped = asyncio.get_running_loop().create_task(until_stopped())
    retiring: set[asyncio.Task[None]] = set()
    try:
        while not stopped.done():
            await asyncio.wait({stopped}, timeout=every_s)
            now = file_stamp(path)
            if stopped.done() or now == stamp:
                continue
            stamp = now
            new = _changed(path, config, handle)
            if new is None:
                continue
            try:
                successor = await start_sidecar(_on_ports_of(handle, config, new), reuse_port=True)
            except (ConfigError, OSError) as exc:
                _reject(handle, path, str(exc))
                continue
            log.info("config %s applied: a sidecar with it serves; the previous one drains", path)
            retiring.add(asyncio.get_running_loop().create_task(handle.close()))
            handle, config = successor, new
    finally:
        stopped.cancel()
        await handle.close()
        await asyncio.gather(*retiring, return_exceptions=True)


def _changed(path: Path, config: SidecarConfig, handle: SidecarHandle) -> SidecarConfig | None:
    """The config ``path`` holds now, if it is valid and not ``config``."""
    try:
        new = SidecarConfig.load(path)
    except ConfigError as exc:
        _reject(handle, path, str(exc))
        return None
    return None if new == config else new


def _reject(handle: SidecarHandle, path: Path, why: str) -> None:
    log.error("config %s changed but is not applied: %s; the sidecar keeps its config", path, why)
    handle.proxy.metrics.config_rejections.inc()


def _on_ports_of(handle: SidecarHandle, old: SidecarConfig, new: SidecarConfig) -> SidecarConfig:
    """``new``, listening where ``handle`` listens when it asks for the same addresses (port 0 picks
    a port once: the successor takes the one picked)."""
    changes = {}
    if new.listen == old.listen:
        changes["listen"] = new.listen.model_copy(update={"port": handle.port})
    if new.metrics == old.metrics:
        changes["metrics"] = new.metrics.model_copy(update={"port": handle.metrics_port})
    return new.model_copy(update=changes)
