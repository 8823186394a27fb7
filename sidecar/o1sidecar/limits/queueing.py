"""The wait queue: the ``Limiter`` the proxy talks to, on top of an admission store (backend.py).

Every request first tries to get in at once (one store call). If it cannot, it waits in this
sidecar's queue for its model, ordered by rank (ordering.py). One dispatcher per model retries the
best waiter when capacity is expected (the store says when), when a grant of that model is released
here, or when the store names one of its waiters as the head of the pool's queue (Redis pub/sub: only
the sidecar holding the head tries, at the time the store gives; a waiter behind others elsewhere
waits for its turn to be named, re-checking only every ``QUEUE_WAIT_S`` in case a message was lost);
the others wait behind it. The store's tickets make the order hold across sidecars, and expire at
their request's deadline. A request that would only queue behind a waiter of this sidecar already in
the store's queue is held back here without asking (``_holder``); it joins the store's queue with the
attempt that admits the waiter ahead of it (``Attempt.successor``), or by its own attempt when it is
the best waiter here. A waiter whose deadline passes gets ``QueueTimeout`` with a
``retry_after_s`` the store estimated at its last check (when capacity for it can next exist); one
whose accounts' request caps stay spent past its deadline gets ``QuotaExhausted`` at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import math
import time
import uuid
from collections import Counter
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from o1sidecar.config import SidecarConfig
from o1sidecar.limits.api import (
    ClientLimited,
    Demand,
    Grant,
    LimiterState,
    NoCapacity,
    QueueFull,
    QueueTimeout,
    QuotaExhausted,
    UpstreamReport,
)
from o1sidecar.limits.backend import (
    QUEUE_WAIT_S,
    AccountLimits,
    Admitted,
    Attempt,
    Backend,
    Denied,
    Settlement,
    Successor,
    Waiting,
    account_limits,
)
from o1sidecar.limits.balancing import Health, health_at, update_health
from o1sidecar.limits.keys import accounts_tag
from o1sidecar.limits.reconcile import settlement

log = logging.getLogger("o1sidecar.limits")

MAX_SLEEP_S = 1.0  # a waiter re-checks at least this often, whatever the store predicted (alone)
MIN_SLEEP_S = 0.002
ERROR_SLEEP_S = 0.1
NAMED_EARLY_S = 5.0  # a naming that came before its waiter was queued here is kept this long
Told = Literal["named", "exact", "behind"]  # what the store said of a waiter (QueueingLimiter._told)


@dataclass(eq=False)
class _Waiter:
    demand: Demand
    accounts: tuple[AccountLimits, ...]
    ticket: str
    rank: float
    seq: int
    started: float
    future: asyncio.Future[Grant]
    last: Denied | None = None
    last_at: float = 0.0  # when ``last`` was said
    named: bool = False  # the store said it heads the pool's queue (it may hold others up if it leaves)
    retry_at: float = 0.0  # when it is worth asking the store again, unless woken sooner
    held: bool = False  # not in the store's queue: held back behind a better waiter here that is


@dataclass
class _ModelQueue:
    heap: list[tuple[float, int, _Waiter]] = field(default_factory=list)  # in the store's queue too
    held: list[tuple[float, int, _Waiter]] = field(default_factory=list)  # only here (rank estimated)
    deadlines: list[tuple[float, int, _Waiter]] = field(default_factory=list)
    aside: list[tuple[float, int, _Waiter]] = field(default_factory=list)  # clients at their limit, by when
    by_ticket: dict[str, _Waiter] = field(default_factory=dict)
    try_now: bool = False  # capacity may have come: ask for the head now, whatever its retry_at
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    head: _Waiter | None = None  # the best waiter when the dispatcher last looked


@dataclass(frozen=True)
class _Active:
    limits: AccountLimits
    model: str
    tokens: int
    admitted: float
    client: str  # when the call counts against its client's own limits (caps.py), else ""


class QueueingLimiter:
    """A ``Limiter``: priority wait queue, balancing and reconciliation over one admission store."""

    def __init__(
        self,
        config: SidecarConfig,
        backend: Backend,
        *,
        clock: Callable[[], float] = time.time,
        live_sidecars: Callable[[], int] = lambda: 1,
    ) -> None:
        self.config = config
        self.backend = backend
        self._clock = clock
        self._live = live_sidecars
        self._aging_s = config.queue.aging_s_per_level
        self._queues: dict[str, _ModelQueue] = {}
        self._waiting: Counter[int] = Counter()
        self._active: dict[str, _Active] = {}
        self._health: dict[str, Health] = {}
        self._limits_cache: dict[tuple[str, tuple[str, ...]], tuple[AccountLimits, ...]] = {}
        self._seq = itertools.count()
        self._settling: set[asyncio.Task[None]] = set()
        # Tickets named before their waiter was queued here (the message can overtake the reply of the
        # attempt that queued it): ticket -> what the store said (``_told``); kept for NAMED_EARLY_S.
        self._named_early: dict[str, tuple[float, Told]] = {}
        self._named_pruned = 0.0
        self._closed = False
        self._draining = False
        # Tickets start with this: a store that names heads to the sidecar holding them (queue.lua)
        # reads the sidecar from it.
        self.ticket_prefix = ""

    async def start(self) -> None:
        self._closed = False
        self._draining = False

    async def drain(self) -> None:
        """Shutting down: hand every waiting request back now (``QueueTimeout`` with a short
        retry-after, so its client asks again elsewhere or after the restart), drop their tickets,
        and refuse to queue more. Grants already given are untouched: those calls finish."""
        self._draining = True
        now = self._clock()
        for model, q in self._queues.items():
            handed_back = [w for w in _all(q) if not w.future.done()]
            for w in handed_back:
                w.future.set_exception(
                    QueueTimeout(
                        f"the sidecar is shutting down; the request waited {now - w.started:.1f}s for "
                        f"{w.demand.model!r} and was not sent. Retry it.",
                        retry_after_s=1.0,
                        waited_s=now - w.started,
                    )
                )
                self._leave(w)
            tickets = [w.ticket for w in handed_back if not w.held]
            if tickets:
                await self._forget(model, tickets)

    async def close(self) -> None:
        if self._settling:
            await asyncio.wait(list(self._settling), timeout=5.0)
        self._closed = True
        dispatchers = [q.task for q in self._queues.values() if q.task is not None]
        for task in dispatchers:
            task.cancel()
        if dispatchers:
            await asyncio.wait(dispatchers, timeout=5.0)
        for q in self._queues.values():
            for w in _all(q):
                if not w.future.done():
                    w.future.set_exception(
                        QueueTimeout("the sidecar is shutting down", 1.0, self._clock() - w.started)
                    )
        self._queues.clear()
        self._waiting.clear()

    # -- acquire -------------------------------------------------------------------------------

    def _limits(self, model: str, names: Sequence[str]) -> tuple[AccountLimits, ...]:
        key = (model, tuple(names))
        cached = self._limits_cache.get(key)
        if cached is None:
            cached = self._limits_cache[key] = tuple(account_limits(self.config, model, key[1]))
        now = self._clock()
        return tuple(
            replace(a, health=health_at(self._health[a.name], now)) if a.name in self._health else a
            for a in cached
        )

    async def acquire(self, demand: Demand, accounts: Sequence[str]) -> Grant:
        limits = self._limits(demand.model, accounts)
        if not limits:
            raise NoCapacity(
                f"none of the accounts {list(accounts)} serves model {demand.model!r}; "
                "add the model to an account (or a tier that includes it) in the sidecar config"
            )
        largest = max(a.tpm for a in limits)
        if demand.tokens > largest:
            raise NoCapacity(
                f"the request needs {demand.tokens} tokens but the largest TPM limit of the accounts "
                f"serving {demand.model!r} is {largest:g}; lower max_tokens or shorten the prompt"
            )
        cap = demand.cap
        if cap is not None and cap.tpm is not None and demand.tokens > cap.tpm:
            raise NoCapacity(
                f"the request needs {demand.tokens} tokens but its client {demand.client!r} may use "
                f"{cap.tpm:g} a minute (clients[].limits.tpm); lower max_tokens or shorten the prompt"
            )
        started = self._clock()
        if demand.deadline <= started:
            raise QueueTimeout("the request's deadline had already passed when it arrived", 1.0, 0.0)
        if sum(self._waiting.values()) >= self.config.queue.max_length:
            raise QueueFull(
                f"{self.config.queue.max_length} requests are already waiting in this sidecar "
                "(queue.max_length); retry later"
            )

        ticket = self._ticket(limits, demand.deadline)
        holder = self._holder(demand, limits)
        if holder is not None:
            held = _held_behind(holder, demand, limits, ticket, next(self._seq), started, self._aging_s)
            return await self._wait(held)
        first = await self._try(Attempt(demand, limits, ticket, ticket, None, self._aging_s))
        if isinstance(first, Admitted):
            return self._granted(first, demand, limits, started)
        if self._draining:
            await self._forget(demand.model, [ticket], limits)
            raise QueueTimeout("the sidecar is shutting down and queues nothing more; retry", 1.0, 0.0)
        if _quota_outlasts(first, demand, started):
            await self._forget(demand.model, [ticket], limits)
            raise _quota_exhausted(demand, first)
        if _client_limit_outlasts(first, demand, started):
            raise _client_limited(demand, first)

        waiter = _Waiter(
            demand=demand,
            accounts=limits,
            ticket=ticket,
            rank=first.rank,
            seq=next(self._seq),
            started=started,
            future=asyncio.get_running_loop().create_future(),
            last=first,
            last_at=started,
            named=first.reason != "queue",
            retry_at=started + min(first.wait_s, self._retry_cap()),
        )
        return await self._wait(waiter)

    async def _wait(self, waiter: _Waiter) -> Grant:
        self._enqueue(waiter)
        try:
            return await asyncio.shield(waiter.future)
        except asyncio.CancelledError:
            self._abandon(waiter)
            raise

    def _ticket(self, limits: Sequence[AccountLimits], deadline: float) -> str:
        """A new queue ticket: ``<sidecar>.<accounts tag>:<deadline ms>:<id>`` (``ticket_prefix`` names
        the sidecar; keys.accounts_tag; the deadline '' when none): the store names a head with an
        exact wait when it has those accounts, and drops one its deadline passes before (queue.lua)."""
        ms = str(int(deadline * 1000)) if math.isfinite(deadline) else ""
        return f"{self.ticket_prefix}{accounts_tag(a.name for a in limits)}:{ms}:{uuid.uuid4().hex}"

    def _holder(self, demand: Demand, limits: tuple[AccountLimits, ...]) -> _Waiter | None:
        """The waiter here, in the store's queue, that ``demand`` would certainly queue behind there: this
        model's best, of the same client and accounts, of at least its priority and older. ``demand``
        then waits here without a ticket (asking the store would only queue it): it joins the store's
        queue when its turn here comes (``_dispatch``), so that a sidecar's store calls grow with its
        admissions, not its arrivals. None: it asks the store (alone, draining, or a client with
        limits of its own, which the store answers at once)."""
        if self.backend.mode != "shared" or self._draining or demand.cap is not None:
            return None
        q = self._queues.get(demand.model)
        w = _best(q.heap, held=False) if q is not None else None
        if w is None or w.demand.priority < demand.priority or w.demand.client != demand.client:
            return None
        return w if _same_accounts(w.accounts, limits) else None

    async def try_acquire(self, demand: Demand, accounts: Sequence[str]) -> Grant | None:
        limits = self._limits(demand.model, accounts)
        cap = demand.cap
        if not limits or demand.tokens > max(a.tpm for a in limits):
            return None
        if cap is not None and cap.tpm is not None and demand.tokens > cap.tpm:
            return None
        started = self._clock()
        ticket = self._ticket(limits, demand.deadline)
        result = await self._try(Attempt(demand, limits, ticket, ticket, None, self._aging_s, queue=False))
        return self._granted(result, demand, limits, started) if isinstance(result, Admitted) else None

    def _granted(
        self, admitted: Admitted, demand: Demand, limits: tuple[AccountLimits, ...], started: float
    ) -> Grant:
        now = self._clock()
        account = next(a for a in limits if a.name == admitted.account)
        client = demand.client if demand.cap is not None else ""
        self._active[admitted.lease_id] = _Active(account, demand.model, demand.tokens, now, client)
        waited = max(0.0, now - started)
        return Grant(admitted.account, demand.model, demand.tokens, admitted.lease_id, waited)

    async def _try(self, attempt: Attempt) -> Admitted | Denied:
        return await self.backend.attempt(attempt)

    def _enqueue(self, w: _Waiter) -> None:
        q = self._queues.get(w.demand.model)
        if q is None:
            q = self._queues[w.demand.model] = _ModelQueue()
        if w.held:
            heapq.heappush(q.held, (w.rank, w.seq, w))
        elif w.last is not None and w.last.reason == "client":
            heapq.heappush(q.aside, (w.started + w.last.wait_s, w.seq, w))
        else:
            heapq.heappush(q.heap, (w.rank, w.seq, w))
        heapq.heappush(q.deadlines, (w.demand.deadline, w.seq, w))
        q.by_ticket[w.ticket] = w
        early = self._named_early.pop(w.ticket, None)
        if early is not None:
            self._told(q, w, *early)
        self._waiting[w.demand.priority] += 1
        q.wake.set()
        if q.task is None or q.task.done():
            q.task = asyncio.get_running_loop().create_task(self._dispatch(w.demand.model, q))

    def _leave(self, w: _Waiter) -> None:
        """Count ``w`` out of the queue (its heap entries are dropped lazily)."""
        q = self._queues.get(w.demand.model)
        if q is not None:
            q.by_ticket.pop(w.ticket, None)
        self._waiting[w.demand.priority] -= 1
        if self._waiting[w.demand.priority] <= 0:
            del self._waiting[w.demand.priority]

    def _abandon(self, w: _Waiter) -> None:
        """The client went away while waiting: leave the queue, or give back a grant it just got."""
        if w.future.done() and not w.future.cancelled() and w.future.exception() is None:
            self._in_background(self.release(w.future.result(), None))
            return
        if not w.future.done():
            w.future.cancel()
            self._leave(w)
            if not w.held:
                self._in_background(self._forget(w.demand.model, [w.ticket], w.accounts))

    def _in_background(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` without waiting for it, held until done so it is neither collected nor lost
        at close."""
        task = asyncio.get_running_loop().create_task(work)
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)

    async def _forget(self, model: str, tickets: list[str], accounts: Sequence[AccountLimits] = ()) -> None:
        """Drop ``tickets`` from the store; ``accounts``, those of their requests (the next head is
        named with its wait on them)."""
        try:
            await self.backend.forget(model, tickets, accounts)
        except Exception:
            log.debug("could not drop %d queue tickets of %s", len(tickets), model, exc_info=True)

    # -- the dispatcher ------------------------------------------------------------------------

    async def _expire(self, model: str, q: _ModelQueue, now: float) -> None:
        """Answer every waiter whose deadline passed, with an honest retry-after. Their tickets expire
        with the deadline in the store; only one that heads the pool's queue is dropped at once, so
        that the next is named without delay."""
        expired: list[_Waiter] = []
        while q.deadlines and (q.deadlines[0][0] <= now or q.deadlines[0][2].future.done()):
            _, _, w = heapq.heappop(q.deadlines)
            if not w.future.done():
                expired.append(w)
        if not expired:
            return
        for w in expired:
            retry = await self._retry_after(w, now)
            waited = now - w.started
            why = "" if w.last is None else f" (last check: {w.last.reason})"
            if not w.future.done():
                w.future.set_exception(
                    QueueTimeout(
                        f"queued {waited:.1f}s for {w.demand.model!r} at priority {w.demand.priority}; no "
                        f"account had capacity for it before its deadline{why}",
                        retry_after_s=retry,
                        waited_s=waited,
                    )
                )
                self._leave(w)
        heads = [w for w in expired if w.named or self.backend.mode == "local"]
        if heads:
            await self._forget(model, [w.ticket for w in heads], heads[0].accounts)

    async def _retry_after(self, w: _Waiter, now: float) -> float:
        """When capacity for ``w`` can next exist, as the store saw it at the waiter's last check
        (cooldowns, the queue ahead, the paced rate) or, if it did not say, as it sees it now; the last
        wait it gave if it cannot say."""
        if w.last is not None and w.last.eta_s is not None:
            eta = w.last.eta_s - (now - w.last_at)
        else:
            attempt = Attempt(w.demand, w.accounts, w.ticket, w.ticket, w.rank, self._aging_s)
            try:
                eta = await self.backend.eta(attempt)
            except Exception:
                log.debug("could not estimate when %s has capacity", w.demand.model, exc_info=True)
                eta = math.nan
        if not math.isfinite(eta):
            eta = w.last.wait_s if w.last is not None and math.isfinite(w.last.wait_s) else 1.0
        return float(max(1, math.ceil(eta)))

    def _head(self, q: _ModelQueue, now: float) -> _Waiter | None:
        """The best waiter here: in the store's queue, or held back (which then joins it at once)."""
        while q.aside and (q.aside[0][0] <= now or q.aside[0][2].future.done()):
            _, _, w = heapq.heappop(q.aside)
            if not w.future.done():
                heapq.heappush(q.heap, (w.rank, w.seq, w))  # its client may call again: back in line
        queued, held = _best(q.heap, held=False), _best(q.held, held=True)
        if queued is None or held is None:
            return queued or held
        return held if (held.rank, held.seq) < (queued.rank, queued.seq) else queued

    def _successor(self, q: _ModelQueue, head: _Waiter) -> _Waiter | None:
        """The waiter held back here that joins the store's queue if ``head`` is admitted (in the same
        store call): the best held back, if of the head's client and accounts."""
        if head.held:
            return None
        s = _best(q.held, held=True)
        if s is None or s.demand.client != head.demand.client:
            return None
        return s if _same_accounts(s.accounts, head.accounts) else None

    def _joined(self, q: _ModelQueue, w: _Waiter, rank: float) -> None:
        """``w``, held back until now, is in the store's queue at ``rank``."""
        w.rank = rank
        if w.held:
            w.held = False
            heapq.heappush(q.heap, (rank, w.seq, w))

    def _behind_others(self, w: _Waiter) -> bool:
        """The store said ``w`` waits behind others and has not named it since: it will, when ``w``'s
        turn comes (the attempt that makes it the pool's head names it). Asking before then would only
        be told so again."""
        return (
            self.backend.mode == "shared"
            and not w.held
            and not w.named
            and w.last is not None
            and (w.last.reason == "queue")
        )

    def _retry_cap(self) -> float:
        """The longest a head waits before asking again: alone, MAX_SLEEP_S; with a store that names
        heads, QUEUE_WAIT_S (a safety net for a lost message)."""
        return QUEUE_WAIT_S if self.backend.mode == "shared" else MAX_SLEEP_S

    async def _dispatch(self, model: str, q: _ModelQueue) -> None:
        """Ask the store for the best waiter here when it is worth it: at the time its last answer
        gave, when the store names it, or when capacity freed here. Deadlines passing and waiters
        coming or going only re-evaluate; they cost no store call."""
        while not self._closed:
            q.wake.clear()
            await self._expire(model, q, self._clock())
            now = self._clock()
            head = self._head(q, now)
            if head is None:
                if q.aside:
                    await self._sleep(q, q.aside[0][0] - now)
                    continue
                q.deadlines.clear()
                return
            if head is not q.head:
                q.head = head
                if self._behind_others(head):  # (its safety net counts from now: it is named, if its turn)
                    head.retry_at = max(head.retry_at, now + QUEUE_WAIT_S)
            if head.retry_at > now and not q.try_now:
                await self._sleep(q, head.retry_at - now)
                continue
            q.try_now = False
            successor = self._successor(q, head)
            attempt = Attempt(
                head.demand,
                self._limits(model, [a.name for a in head.accounts]),
                head.ticket,
                head.ticket,
                None if head.held else head.rank,
                self._aging_s,
                age_s=now - head.started if head.held else 0.0,
                successor=None if successor is None else _joining(successor, now),
            )
            failed = False
            try:
                result = await self._try(attempt)
            except Exception:
                log.exception("admission check for %s failed; retrying", model)
                result, failed = Denied("capacity", ERROR_SLEEP_S, head.rank), True
            if isinstance(result, Admitted):
                grant = self._granted(result, head.demand, attempt.accounts, head.started)
                if head.future.done():
                    await self.release(grant, None)
                else:
                    head.future.set_result(grant)
                    self._leave(head)
                if successor is not None and result.successor_rank is not None:
                    if successor.future.done():  # (it left while it joined)
                        await self._forget(model, [successor.ticket], successor.accounts)
                    elif not successor.named:  # (else its naming came first, and said when)
                        successor.retry_at = self._clock() + self._retry_cap()
                    self._joined(q, successor, result.successor_rank)
                # The next may fit too. A store that names heads says so itself (only to its sidecar).
                q.try_now = q.try_now or self.backend.mode != "shared"
                continue
            now = self._clock()
            if head.held and not failed and result.reason != "client":  # (its first attempt queued it)
                self._joined(q, head, result.rank)
                if head.future.done():  # (it left while it joined)
                    await self._forget(model, [head.ticket], head.accounts)
                    continue
            head.last, head.last_at, head.rank = result, now, result.rank
            head.named = head.named or result.reason != "queue"
            head.retry_at = now + min(result.wait_s, self._retry_cap())
            if _quota_outlasts(result, head.demand, now):
                head.future.set_exception(_quota_exhausted(head.demand, result))
                self._leave(head)
                await self._forget(model, [head.ticket], head.accounts)
                continue
            if result.reason == "client":  # (the store took its ticket out)
                heapq.heappop(q.heap)
                if _client_limit_outlasts(result, head.demand, now):
                    head.future.set_exception(_client_limited(head.demand, result))
                    self._leave(head)
                else:
                    heapq.heappush(q.aside, (now + result.wait_s, head.seq, head))
                continue

    async def _sleep(self, q: _ModelQueue, wait_s: float) -> None:
        """Until ``wait_s`` passes, a deadline or a set-aside waiter is due, or something wakes the
        queue."""
        sleep = wait_s
        now = self._clock()
        for due in (q.deadlines, q.aside):
            if due:
                sleep = min(sleep, due[0][0] - now)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(q.wake.wait(), max(MIN_SLEEP_S, sleep))

    def wake(self, model: str | None = None) -> None:
        """Capacity may have come: make the dispatcher of ``model`` (or of every model) ask now."""
        for name, q in self._queues.items():
            if model is None or name == model:
                q.try_now = True
                q.wake.set()

    def named(self, model: str, ticket: str, wait_s: float, exact: bool = False) -> None:
        """The store named ``ticket`` the head of ``model``'s queue, admissible in ``wait_s``: if it
        waits here, the dispatcher asks then (another sidecar's ticket: nothing to do). An ``exact``
        wait is the soonest on all of its accounts, and replaces a sooner time it had (capacity was
        taken since: asking then would be refused); another is an upper bound, and the sooner stays."""
        self._heard(model, ticket, self._clock() + max(0.0, wait_s), "exact" if exact else "named")

    def behind(self, model: str, ticket: str, wait_s: float) -> None:
        """The store's head ``ticket`` waits behind another again: it asks when named, or in ``wait_s``
        (a safety net), not at the time it was named with; and, no longer the head, it leaves without
        a call if its deadline comes first (its ticket expires then)."""
        self._heard(model, ticket, self._clock() + max(0.0, wait_s), "behind")

    def _heard(self, model: str, ticket: str, at: float, told: Told) -> None:
        q = self._queues.get(model)
        w = q.by_ticket.get(ticket) if q is not None else None
        if q is None or w is None:
            now = self._clock()
            if now - self._named_pruned >= NAMED_EARLY_S:  # (once in a while, not on every message)
                self._named_pruned = now
                early = self._named_early.items()
                for stale in [t for t, (when, _) in early if when < now - NAMED_EARLY_S]:
                    del self._named_early[stale]
            self._named_early[ticket] = (at, told)  # (ours, not queued yet; or another sidecar's: forgotten)
            return
        if not w.future.done():
            self._told(q, w, at, told)
            q.wake.set()

    def _told(self, q: _ModelQueue, w: _Waiter, at: float, told: Told) -> None:
        """What the store said of ``w`` (``named``, ``behind``): when it asks next."""
        if told == "behind":
            if not w.held:
                w.named, w.retry_at = False, at
            return
        if w.held:  # (named, so it joined the store's queue: the reply that says at what rank is on its
            w.retry_at = at  # way, and puts it in line here; until then the dispatcher awaits that reply)
        w.named = True
        if told == "exact" and not w.held:
            w.retry_at = at
        head = self._head(q, self._clock())
        for x in (w, head):
            if x is not None:
                x.retry_at = min(x.retry_at, at)

    def waiting(self) -> list[Waiting]:
        """Every request waiting here, for a store taking over."""
        return [
            Waiting(model, w.ticket, w.rank, w.demand.tokens, w.demand.deadline)
            for model, q in self._queues.items()
            for _, _, w in q.heap
            if not w.future.done()
        ]  # (not those set aside: they hold no ticket until their client may call again)

    # -- release -------------------------------------------------------------------------------

    async def release(self, grant: Grant, report: UpstreamReport | None) -> None:
        """Free the grant's lease and reconcile.

        Against Redis the settlement runs in the background (the answer need not wait one more round
        trip), except after a 429: what it changes is in place before ``release`` returns, so the
        request that goes back to the queue cannot be admitted into the same refusal.
        """
        active = self._active.pop(grant.lease_id, None)
        if active is None:
            return
        now = self._clock()
        s = Settlement(
            active.limits, active.model, grant.lease_id, elapsed_s=now - active.admitted, client=active.client
        )
        if report is not None:
            name = active.limits.name
            self._health[name] = update_health(self._health.get(name, Health(1.0, now)), report, now)
            s = settlement(s, active.tokens, report)
        if self.backend.mode == "shared" and s.outcome != "rate_limited":
            self._in_background(self._settle(s))
        else:
            await self._settle(s)

    async def _settle(self, settlement: Settlement) -> None:
        try:
            await self.backend.settle(settlement)
        except Exception:
            account, model = settlement.account.name, settlement.model
            log.debug("could not settle lease of %s/%s", account, model, exc_info=True)
        if self.backend.mode != "shared":  # (a shared store names the head itself, to its sidecar)
            self.wake(settlement.model)

    # -- state ---------------------------------------------------------------------------------

    def state(self) -> LimiterState:
        return LimiterState(
            mode=self.backend.mode,
            live_sidecars=max(1, self._live()),
            queue_length=dict(self._waiting),
            usage=dict(self.backend.snapshot().usage),
        )


def _quota_outlasts(denied: Denied, demand: Demand, now: float) -> bool:
    """Every account's request cap is spent until after the request's deadline."""
    return denied.reason == "quota" and now + denied.wait_s > demand.deadline


def _client_limit_outlasts(denied: Denied, demand: Demand, now: float) -> bool:
    """The client stays at its own limit until after the request's deadline."""
    return denied.reason == "client" and now + denied.wait_s > demand.deadline


def _client_limited(demand: Demand, denied: Denied) -> ClientLimited:
    cap = demand.cap
    limits = []
    if cap is not None and cap.rpm is not None:
        limits.append(f"{cap.rpm:g} requests")
    if cap is not None and cap.tpm is not None:
        limits.append(f"{cap.tpm:g} tokens")
    return ClientLimited(
        f"client {demand.client!r} is at its own limit of {' and '.join(limits)} per minute "
        f"(clients[].limits) and may call again in {denied.wait_s:.1f}s, after this request's deadline",
        retry_after_s=denied.wait_s,
    )


def _all(q: _ModelQueue) -> list[_Waiter]:
    """Every waiter of the queue: in line, held back, and set aside."""
    held = [w for _, _, w in q.held if w.held]
    return [w for _, _, w in q.heap] + held + [w for _, _, w in q.aside]


def _best(heap: list[tuple[float, int, _Waiter]], *, held: bool) -> _Waiter | None:
    """The best live waiter of ``heap`` (``q.heap`` or ``q.held``), dropping those gone from it."""
    while heap and (heap[0][2].future.done() or heap[0][2].held != held):
        heapq.heappop(heap)
    return heap[0][2] if heap else None


def _same_accounts(a: Sequence[AccountLimits], b: Sequence[AccountLimits]) -> bool:
    return len(a) == len(b) and all(x.name == y.name for x, y in zip(a, b, strict=True))


def _held_behind(
    holder: _Waiter,
    demand: Demand,
    accounts: tuple[AccountLimits, ...],
    ticket: str,
    seq: int,
    now: float,
    aging_s: float,
) -> _Waiter:
    """A waiter held back behind ``holder`` (``_holder``): its rank as the store would give it, from the
    holder's (ranks are arrival time less priority times aging), and the holder's last answer (what
    it says when it times out, it says of the queue this one is behind)."""
    rank = holder.rank + (now - holder.started) + (holder.demand.priority - demand.priority) * aging_s
    return _Waiter(
        demand=demand,
        accounts=accounts,
        ticket=ticket,
        rank=rank,
        seq=seq,
        started=now,
        future=asyncio.get_running_loop().create_future(),
        last=holder.last,
        last_at=holder.last_at,
        retry_at=now,
        held=True,
    )


def _joining(w: _Waiter, now: float) -> Successor:
    return Successor(w.ticket, w.demand.priority, w.demand.tokens, now - w.started, w.demand.deadline)


def _quota_exhausted(demand: Demand, denied: Denied) -> QuotaExhausted:
    hours = denied.wait_s / 3600
    return QuotaExhausted(
        f"every account serving {demand.model!r} has spent its daily or monthly request cap; the next "
        f"one resets in {hours:.1f} h (UTC calendar)",
        retry_after_s=denied.wait_s,
    )
