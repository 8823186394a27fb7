"""Config builders and a settable clock for the limiter tests."""

from __future__ import annotations

from typing import Any

from o1sidecar.config import SidecarConfig


class Clock:
    """A wall clock the test moves by hand."""

    def __init__(self, t: float = 1_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def config(
    accounts: dict[str, dict[str, Any]],
    *,
    model: str = "o1-mini",
    redis_url: str | None = None,
    **sections: Any,
) -> SidecarConfig:
    """A config whose accounts each have the given limits for ``model``."""
    data: dict[str, Any] = {
        "accounts": [
            {"name": name, "models": {model: limits}, "keys": [{"name": "k", "env": "UNUSED_KEY"}]}
            for name, limits in accounts.items()
        ],
        **sections,
    }
    if redis_url:
        data.setdefault("redis", {})["url"] = redis_url
    return SidecarConfig.from_dict(data)
