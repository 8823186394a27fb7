"""The admission store in Redis: the thin I/O around the Lua scripts (lua/*.lua), one script call per
attempt, settlement, estimate or heartbeat."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from o1sidecar.limits.api import Usage
from o1sidecar.limits.backend import (
    AccountLimits,
    Admitted,
    Attempt,
    Denied,
    Held,
    Mode,
    Settlement,
    Snapshot,
    Successor,
    Waiting,
)
from o1sidecar.limits.connect import RedisClient
from o1sidecar.limits.connect import redis_client as redis_client  # (where the sidecar has it from)
from o1sidecar.limits.connect import redis_password as redis_password
from o1sidecar.limits.keys import PoolKeys, accounts_tag
from o1sidecar.limits.scripts import Scripts


def _num(value: float | None) -> str:
    return "" if value is None else repr(float(value))


def _int_or_zero(value: int | None) -> str:
    return "0" if value is None else str(value)


def packed_limits(a: AccountLimits) -> str:
    """An account as rule.lua's ``limits()`` reads it."""
    return ";".join(
        (
            a.name,
            repr(float(a.rpm)),
            repr(float(a.tpm)),
            _int_or_zero(a.concurrency),
            repr(a.weight),
            repr(a.health),
            repr(a.burst_s),
            "1" if a.adaptive else "0",
            _int_or_zero(a.daily),
            _int_or_zero(a.monthly),
            repr(a.max_cooldown_s),
        )
    )


def packed_settlement(s: Settlement) -> str:
    return ";".join(
        (
            s.lease_id,
            s.outcome,
            str(s.extra_tokens),
            _num(s.remaining_requests),
            _num(s.remaining_tokens),
            _num(s.limit_requests),
            _num(s.limit_tokens),
            repr(float(s.elapsed_s)),
            _num(s.retry_after_s),
            s.limit_type or "",
            _num(s.reset_requests_s),
            _num(s.reset_tokens_s),
            str(s.charged_tokens),
        )
    )


@dataclass(frozen=True)
class Carried:
    """Keys and arguments that ride along with a heartbeat (the pool's sync: poolsync.py); ``took``
    gets their part of the reply, ``failed`` the error if the call failed."""

    keys: list[str]
    args: list[str | int]
    took: Callable[[Any], None]
    failed: Callable[[BaseException], None]


@dataclass(frozen=True)
class Beat:
    """What a heartbeat read back."""

    live_sidecars: int
    server_offset_s: float  # Redis TIME minus our clock
    usage: dict[tuple[str, str], Usage]


def _packed_successor(s: Successor | None) -> tuple[str, ...]:
    if s is None:
        return ("", "", "", "", "")
    deadline = _num(s.deadline) if math.isfinite(s.deadline) else ""
    return (s.ticket, str(s.priority), str(s.tokens), repr(s.age_s), deadline)


def _optional_int(text: str) -> int | None:
    return None if text == "" else round(float(text))


class RedisBackend:
    """Admission counters in Redis, shared by every sidecar of the pool."""

    mode: Mode = "shared"

    def __init__(
        self,
        client: RedisClient,
        keys: PoolKeys,
        *,
        lease_ttl_s: float,
        ticket_ttl_s: float,
        server_clock: Callable[[], float] | None = None,
    ) -> None:
        self.client = client
        self.keys = keys
        self.scripts = Scripts.register(client, keys.tag)
        self.lease_ttl_s = lease_ttl_s
        self.ticket_ttl_s = ticket_ttl_s
        self._server_clock = server_clock  # tests only: drive the scripts' time
        self._held: dict[str, Held] = {}
        self._last = Snapshot()
        self.server_offset_s = 0.0

    def _now(self) -> str:
        return "" if self._server_clock is None else repr(self._server_clock())

    def _account_keys(self, account: str, model: str) -> list[str]:
        return [
            self.keys.account(account, model),
            self.keys.leases(account, model),
            self.keys.window(account, model),
        ]

    async def attempt(self, a: Attempt) -> Admitted | Denied:
        d = a.demand
        keys = [self.keys.queue(d.model), self.keys.ticket_expiry(d.model), self.keys.ticket_cost(d.model)]
        params = ";".join(
            (
                str(d.priority),
                repr(a.aging_s),
                str(d.tokens),
                repr(self.lease_ttl_s),
                repr(self.ticket_ttl_s),
                _num(a.rank),
                "1" if a.queue else "0",
                a.lease_id,
                d.client,
                repr(d.weight),
                _num(d.deadline) if math.isfinite(d.deadline) else "",
                _num(d.cap.rpm if d.cap else None),
                _num(d.cap.tpm if d.cap else None),
                repr(a.age_s),
                *_packed_successor(a.successor),
                accounts_tag(x.name for x in a.accounts),
            )
        )
        args = [self._now(), a.ticket, params, self.keys.wake_channel(), d.model]
        for acct in a.accounts:
            keys += self._account_keys(acct.name, d.model)
            args.append(packed_limits(acct))
        keys += [self.keys.fair_share(d.model), self.keys.places(d.model)]
        if d.client and d.cap is not None:
            keys += [self.keys.client_window(d.client), self.keys.client_tokens()]
        result = await self.scripts.admit(keys, args)
        if int(result[0]) == 1:
            account = str(result[1])
            limits = next(x for x in a.accounts if x.name == account)
            self._held[a.lease_id] = Held(a.lease_id, limits, d.model, d.tokens)
            successor_rank = result[2] if len(result) > 2 else ""
            return Admitted(account, a.lease_id, float(successor_rank) if successor_rank else None)
        eta = int(result[4]) / 1000 if len(result) > 4 else None
        return Denied(str(result[1]), int(result[2]) / 1000, float(result[3]), eta)  # type: ignore[arg-type]

    async def settle(self, s: Settlement) -> None:
        self._held.pop(s.lease_id, None)
        keys = [*self._account_keys(s.account.name, s.model), self.keys.queue(s.model)]
        keys.append(self.keys.ticket_cost(s.model))
        account, settled = packed_limits(s.account), packed_settlement(s)
        args = [self._now(), self.keys.wake_channel(), s.model, account, settled]
        if s.client:
            keys += [self.keys.client_window(s.client), self.keys.client_tokens()]
            args.append(s.client)
        await self.scripts.release(keys, args)

    async def eta(self, a: Attempt) -> float:
        d = a.demand
        keys = [self.keys.queue(d.model), self.keys.ticket_cost(d.model)]
        args = [self._now(), a.ticket, f"{d.tokens};{_num(a.rank)};{d.priority};{a.aging_s!r}"]
        for acct in a.accounts:
            keys += self._account_keys(acct.name, d.model)
            args.append(packed_limits(acct))
        return float(await self.scripts.eta(keys, args))

    async def forget(self, model: str, tickets: list[str], accounts: Sequence[AccountLimits] = ()) -> None:
        if not tickets:
            return
        keys = [
            self.keys.queue(model),
            self.keys.ticket_expiry(model),
            self.keys.ticket_cost(model),
            self.keys.fair_share(model),
            self.keys.places(model),
        ]
        tag = accounts_tag(a.name for a in accounts) if accounts else ""
        args: list[str | int] = [self.keys.wake_channel(), model, self._now(), tag, len(accounts)]
        for acct in accounts:
            keys += self._account_keys(acct.name, model)
            args.append(packed_limits(acct))
        await self.scripts.forget(keys, [*args, *tickets])

    async def adopt(self, waiting: list[Waiting]) -> None:
        if not waiting:
            return
        expires = time.time() + self.server_offset_s + self.ticket_ttl_s
        pipe = self.client.pipeline(transaction=True)
        for w in waiting:
            pipe.zadd(self.keys.queue(w.model), {w.ticket: w.rank}, nx=True)
            pipe.zadd(self.keys.ticket_expiry(w.model), {w.ticket: min(expires, w.deadline)})
            pipe.hset(self.keys.ticket_cost(w.model), w.ticket, w.tokens)
        await pipe.execute()

    def held(self) -> list[Held]:
        return list(self._held.values())

    def drop_held(self, lease_id: str) -> None:
        """Forget a grant another store settles (its Redis lease expires by itself)."""
        self._held.pop(lease_id, None)

    def snapshot(self) -> Snapshot:
        return self._last

    async def heartbeat(
        self,
        sidecar_id: str,
        live_for_s: float,
        waiting: list[Waiting],
        pairs: list[tuple[AccountLimits, str]],
        carried: Carried | None = None,
    ) -> Beat:
        """Register this sidecar, renew its leases and tickets; read back live sidecars and usage; and
        run what is ``carried`` in the same call."""
        by_model: dict[str, list[str]] = {}  # model -> ticket, deadline ('' none), ...
        for w in waiting:
            by_model.setdefault(w.model, []).extend(
                (w.ticket, _num(w.deadline) if math.isfinite(w.deadline) else "")
            )
        leases: dict[tuple[str, str], list[str]] = {}
        for held in list(self._held.values()):
            leases.setdefault((held.limits.name, held.model), []).append(held.lease_id)
        keys = [self.keys.sidecars()]
        args: list[str | int | float] = [
            self._now(),
            sidecar_id,
            repr(live_for_s),
            repr(self.lease_ttl_s),
            repr(self.ticket_ttl_s),
            len(by_model),
        ]
        for model, tickets in by_model.items():
            q = self.keys
            keys += [q.ticket_expiry(model), q.queue(model), q.ticket_cost(model), q.places(model)]
            args += [len(tickets) // 2, *tickets]
        args.append(len(pairs))
        for limits, model in pairs:
            keys += self._account_keys(limits.name, model)
            lease_ids = leases.get((limits.name, model), [])
            args += [packed_limits(limits), len(lease_ids), *lease_ids]
        if carried is not None:
            keys += carried.keys
            args += carried.args
        try:
            result = await self.scripts.heartbeat(keys, args)
        except BaseException as exc:
            if carried is not None:
                carried.failed(exc)
            raise
        if carried is not None:
            carried.took(result[2 + 6 * len(pairs)])
        usage = {}
        for i, (limits, model) in enumerate(pairs):
            r = result[2 + 6 * i : 8 + 6 * i]
            usage[(limits.name, model)] = Usage(
                requests_ratio=float(r[0]),
                tokens_ratio=float(r[1]),
                effective_rpm=float(r[2]),
                effective_tpm=float(r[3]),
                daily_left=_optional_int(r[4]),
                monthly_left=_optional_int(r[5]),
            )
        self.server_offset_s = float(result[1]) - time.time()
        self._last = Snapshot(usage)
        return Beat(int(result[0]), self.server_offset_s, usage)
