"""Where a request goes once an account is chosen: URL and auth header per account kind, and the
round-robin over the account's keys. Key values are read once at start and held only here."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from urllib.parse import quote

from o1sidecar.config import Account, SidecarConfig


@dataclass(frozen=True)
class UpstreamKey:
    account: str
    name: str
    value: str = field(repr=False)

    @property
    def label(self) -> str:
        """``account/key`` names: what metrics and logs show instead of the key."""
        return f"{self.account}/{self.name}"


class AccountRoute:
    """One account's keys and how to address its endpoints."""

    def __init__(self, account: Account, keys: Sequence[UpstreamKey]) -> None:
        self.account = account
        self.keys = list(keys)
        self._next = 0
        base = account.base_url.rstrip("/")
        if account.kind == "azure" and base.endswith("/openai"):
            base = base[: -len("/openai")]
        self._base = base

    def next_key(self) -> UpstreamKey:
        key = self.keys[self._next % len(self.keys)]
        self._next += 1
        return key

    def url(self, endpoint: str, model: str) -> str:
        """Full URL of ``endpoint`` (``chat/completions``, ``responses``, ``embeddings``, ``models``)."""
        account = self.account
        if account.kind != "azure":
            return f"{self._base}/{endpoint}"
        version = quote(account.api_version or "", safe="")
        if endpoint in {"chat/completions", "embeddings", "completions"}:
            deployment = quote(account.deployments.get(model, model), safe="")
            return f"{self._base}/openai/deployments/{deployment}/{endpoint}?api-version={version}"
        return f"{self._base}/openai/{endpoint}?api-version={version}"

    def auth_headers(self, key: UpstreamKey) -> dict[str, str]:
        if self.account.kind == "azure":
            return {"api-key": key.value}
        return {"Authorization": f"Bearer {key.value}"}


def load_routes(config: SidecarConfig) -> dict[str, AccountRoute]:
    """Every account's route, reading each key now (errors name the key's source, never its value)."""
    routes = {}
    for account in config.accounts:
        keys = [UpstreamKey(account.name, ref.name, ref.read()) for ref in account.keys]
        routes[account.name] = AccountRoute(account, keys)
    return routes
