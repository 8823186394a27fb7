"""Where a request goes once an account is chosen: URL and auth header per account kind, and the
round-robin over the account's keys, skipping keys the upstream refused lately. Key values are read
at start (and again when a mounted key file changes: keyfiles.py) and held only here."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from urllib.parse import quote

from o1common.keyprint import key_fingerprint
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

    @property
    def fingerprint(self) -> str:
        """Tells this value of the key from another (o1common.keyprint); says nothing of either."""
        return key_fingerprint(self.label, self.value)


# A key the upstream refused (401/403) rests this long, doubling with each refusal in a row.
QUARANTINE_FIRST_S = 60.0
QUARANTINE_MAX_S = 3600.0


@dataclass(frozen=True)
class Quarantine:
    refusals: int  # in a row
    rest_s: float
    until: float  # clock time when the key may be tried once more


class AccountRoute:
    """One account's keys and how to address its endpoints."""

    def __init__(
        self, account: Account, keys: Sequence[UpstreamKey], *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.account = account
        self.keys = list(keys)
        self._next = 0
        self._clock = clock
        self._quarantine: dict[str, Quarantine] = {}
        base = account.base_url.rstrip("/")
        if account.kind == "azure" and base.endswith("/openai"):
            base = base[: -len("/openai")]
        self._base = base

    def next_key(self) -> UpstreamKey:
        """The next key in turn that is not in quarantine (a key whose quarantine is over gets one
        try); if every key is, the one whose quarantine ends first."""
        now = self._clock()
        for step in range(len(self.keys)):
            key = self.keys[(self._next + step) % len(self.keys)]
            held = self._quarantine.get(key.name)
            if held is None or held.until <= now:
                self._next += step + 1
                return key
        return min(self.keys, key=lambda k: self._quarantine[k.name].until)

    def refused(self, key: UpstreamKey) -> Quarantine:
        """The upstream refused ``key`` (401/403): rest it, 60 s doubling to an hour per refusal in a row."""
        before = self._quarantine.get(key.name)
        refusals = before.refusals + 1 if before else 1
        rest = min(QUARANTINE_FIRST_S * 2 ** (refusals - 1), QUARANTINE_MAX_S)
        held = self._quarantine[key.name] = Quarantine(refusals, rest, self._clock() + rest)
        return held

    def accepted(self, key: UpstreamKey) -> bool:
        """The upstream accepted ``key``: out of quarantine. Whether it was in."""
        return bool(self._quarantine) and self._quarantine.pop(key.name, None) is not None

    def adopt(self, name: str, refusals: int, rest_s: float, remaining_s: float) -> Quarantine:
        """Quarantine key ``name`` as the pool decided (quarantine.py): ``remaining_s`` from now."""
        held = self._quarantine[name] = Quarantine(refusals, rest_s, self._clock() + remaining_s)
        return held

    def lift(self, name: str) -> None:
        """Key ``name`` is no longer in quarantine for the pool."""
        self._quarantine.pop(name, None)

    def in_quarantine(self) -> list[str]:
        now = self._clock()
        return sorted(name for name, held in self._quarantine.items() if held.until > now)

    def rekey(self, name: str, value: str) -> bool:
        """Key ``name`` has ``value`` from now on (a rotation: keyfiles.py), out of quarantine; whether
        that is a new value."""
        for i, key in enumerate(self.keys):
            if key.name == name:
                if key.value == value:
                    return False
                self.keys[i] = UpstreamKey(key.account, name, value)
                self._quarantine.pop(name, None)
                return True
        raise KeyError(name)

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
