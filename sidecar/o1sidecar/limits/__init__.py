"""Admission control: shared RPM/TPM/concurrency limits and the cluster-wide priority queue.

``build_limiter(config)`` gives the proxy its ``Limiter`` (api.py): shared through Redis when
``redis.url`` is set, in this process otherwise.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from o1sidecar.config import SidecarConfig
from o1sidecar.limits.api import (
    Demand,
    Grant,
    Limiter,
    LimiterState,
    NoCapacity,
    QueueFull,
    QueueTimeout,
    QuotaExhausted,
    UpstreamReport,
)
from o1sidecar.limits.local import LocalLimiter

__all__ = [
    "Demand",
    "Grant",
    "Limiter",
    "LimiterState",
    "LocalLimiter",
    "NoCapacity",
    "QueueFull",
    "QueueTimeout",
    "QuotaExhausted",
    "UpstreamReport",
    "build_limiter",
]


def build_limiter(config: SidecarConfig, *, clock: Callable[[], float] = time.time) -> Limiter:
    """The shared (Redis) limiter when ``config.redis.url`` is set, else the in-process one."""
    if config.redis.url:
        from o1sidecar.limits.shared import SharedLimiter

        return SharedLimiter(config, clock=clock)
    return LocalLimiter(config, clock=clock)
