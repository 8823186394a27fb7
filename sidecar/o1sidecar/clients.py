"""The pool's clients as this sidecar applies them (``clients:`` in the config; docs/tenants.md#clients):
which client a request is from, the priority ceiling it is queued under, and its budgets.

An injected sidecar serves one pod, so its requests are all one client's: the first whose match the
pod's identity meets (identity.py), or none. No client means no ceiling and no budget. A gateway
(``gateway.enabled``) serves callers from anywhere: each request must carry one of a client's virtual
keys as its Bearer token, or gets 401. Only the keys' SHA-256 digests are kept, compared in constant
time; a Secret may hold the digest (``sha256:<hex>``) instead of the key, so the key itself is never
at rest in the cluster. Spending is counted for every client, budgets or not, so the pool's status
shows what each spent (spend.py)."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Callable

from o1sidecar import errors
from o1sidecar.config import Client, ConfigError, KeyRef, SidecarConfig
from o1sidecar.identity import Identity
from o1sidecar.spend import BudgetSpent, SpendLedger, budget_spent, budgets_left

VIRTUAL_KEY_PREFIX = "sk-o1p-"
DIGEST_PREFIX = "sha256:"
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_BEARER = re.compile(r"^\s*Bearer\s+(\S+)\s*$", re.IGNORECASE)


def new_virtual_key() -> tuple[str, str]:
    """A new virtual key and the ``sha256:`` digest to store in its Secret instead of it."""
    key = VIRTUAL_KEY_PREFIX + secrets.token_urlsafe(32)
    return key, DIGEST_PREFIX + hashlib.sha256(key.encode()).hexdigest()


def stored_digest(ref: KeyRef) -> bytes:
    """The digest of one virtual key: its Secret holds the digest, or the key (hashed now)."""
    value = ref.read()
    if value.startswith(DIGEST_PREFIX):
        if not _DIGEST.match(value):
            raise ConfigError(
                f"virtual key {ref.name!r}: a value starting with {DIGEST_PREFIX} must be {DIGEST_PREFIX} "
                "and 64 lowercase hex digits (o1pool virtual-key prints one)"
            )
        return bytes.fromhex(value[len(DIGEST_PREFIX) :])
    return hashlib.sha256(value.encode()).digest()


class Clients:
    def __init__(
        self,
        config: SidecarConfig,
        identity: Identity,
        ledger: SpendLedger | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.gateway = config.gateway.enabled
        self.own = None
        if not self.gateway:
            self.own = config.client_for(identity.namespace, identity.workload, identity.service_account)
        self._keyed = [c for c in config.clients if c.virtual_keys]
        self._digests = [(stored_digest(ref), c) for c in self._keyed for ref in c.virtual_keys]
        self.ledger = ledger or SpendLedger(clock)
        self._clock = clock

    def served(self) -> list[Client]:
        """The clients this sidecar serves: its pod's, or a gateway's (those with virtual keys)."""
        if self.gateway:
            return list(self._keyed)
        return [self.own] if self.own is not None else []

    def names(self) -> list[str]:
        """The clients whose spending this sidecar counts."""
        return [c.name for c in self.served()]

    def of_request(self, authorization: str | None) -> Client | None:
        """The request's client; a gateway's request without a client's virtual key gets 401."""
        if not self.gateway:
            return self.own
        match = _BEARER.match(authorization or "")
        if match is None:
            raise errors.missing_api_key()
        digest = hashlib.sha256(match.group(1).encode()).digest()
        found = None
        for stored, client in self._digests:  # (every one, in constant time each)
            if hmac.compare_digest(stored, digest) and found is None:
                found = client
        if found is None:
            raise errors.invalid_api_key(match.group(1))
        return found

    @staticmethod
    def priority(client: Client | None, asked: int) -> int:
        """The priority a request asking ``asked`` is queued at."""
        if client is None or client.max_priority is None:
            return asked
        return min(asked, client.max_priority)

    def budget_spent(self, client: Client | None) -> BudgetSpent | None:
        """The client's first spent budget, by what the pool last said plus this sidecar's spending since
        (no Redis round trip)."""
        if client is None or not client.budgets.any():
            return None
        return budget_spent(client.budgets, self.ledger.spent(client.name), self._clock())

    def spent(self, client: Client | None, usd: float, tokens: int) -> None:
        if client is not None and (usd or tokens):
            self.ledger.add(client.name, usd, tokens)

    def left(self, client: Client) -> dict[str, float]:
        """What is left of each of the client's budgets (the metrics)."""
        return budgets_left(client.budgets, self.ledger.spent(client.name))
