"""What each client of the pool spent today and this month (UTC), shared by the pool's sidecars
through Redis, and the budgets that spending is held to.

Each answer's cost and tokens (prices.py) are added to this sidecar's ledger in memory. Every
``redis.heartbeat_interval_s`` one command (the pool's sync: poolsync.py) adds them to the pool's spend HASHes
(``PoolKeys.spend``: ``<client>:usd`` in micro-dollars, ``<client>:tokens``), one per UTC day and
month, and reads the totals back in the same reply. Admission then checks a budget against the last
total read plus what this sidecar spent since, so a budget costs no Redis round trip on the hot path.
The price of that: the pool can overspend a budget by what its other sidecars spend within one interval.

While Redis is unreachable the increments stay in memory and go with the next flush; meanwhile each
sidecar holds the budget against what it knew plus its own spending.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from o1sidecar.config import Budgets
from o1sidecar.limits.connect import RedisClient
from o1sidecar.limits.keys import PoolKeys
from o1sidecar.poolsync import Op, Sync, SyncPart

log = logging.getLogger("o1sidecar.spend")

MICRO = 1_000_000  # the HASHes count micro-dollars: HINCRBY is exact where HINCRBYFLOAT is not
DAY_KEEP_S = 3 * 86_400
MONTH_KEEP_S = 62 * 86_400


def day_period(now: float) -> str:
    return f"d{int(now // 86_400)}"


def month_period(now: float) -> str:
    at = datetime.fromtimestamp(now, UTC)
    return f"m{at.year:04d}{at.month:02d}"


def next_day_s(now: float) -> float:
    return 86_400 - now % 86_400


def next_month_s(now: float) -> float:
    at = datetime.fromtimestamp(now, UTC)
    first = datetime(at.year + at.month // 12, at.month % 12 + 1, 1, tzinfo=UTC)
    return first.timestamp() - now


@dataclass(frozen=True)
class Spent:
    usd: float = 0.0
    tokens: int = 0


@dataclass(frozen=True)
class ClientSpend:
    """One client's spending in the day and the month under way."""

    today: Spent
    month: Spent


class SpendLedger:
    """This sidecar's view of what each client spent. Pure; the clock is injected."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._pending: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])  # micro, tokens
        self._known: dict[tuple[str, str], tuple[int, int]] = {}  # the totals Redis last said

    def add(self, client: str, usd: float, tokens: int) -> None:
        now = self._clock()
        micro = round(usd * MICRO)
        for period in (day_period(now), month_period(now)):
            entry = self._pending[(period, client)]
            entry[0] += micro
            entry[1] += tokens

    def take(self) -> dict[tuple[str, str], tuple[int, int]]:
        """The increments not yet written, to be written; they are counted as known meanwhile."""
        out = {key: (v[0], v[1]) for key, v in self._pending.items()}
        for key, (micro, tokens) in out.items():
            known = self._known.get(key, (0, 0))
            self._known[key] = (known[0] + micro, known[1] + tokens)
        self._pending.clear()
        return out

    def give_back(self, increments: Mapping[tuple[str, str], tuple[int, int]]) -> None:
        """Increments a flush could not write: they go with the next one."""
        for key, (micro, tokens) in increments.items():
            known = self._known.get(key, (0, 0))
            self._known[key] = (known[0] - micro, known[1] - tokens)
            entry = self._pending[key]
            entry[0] += micro
            entry[1] += tokens

    def learned(self, period: str, client: str, micro: int, tokens: int) -> None:
        """Redis's totals, this sidecar's increments of the same flush included."""
        self._known[(period, client)] = (micro, tokens)

    def spent(self, client: str) -> ClientSpend:
        now = self._clock()
        return ClientSpend(self._spent(day_period(now), client), self._spent(month_period(now), client))

    def _spent(self, period: str, client: str) -> Spent:
        known = self._known.get((period, client), (0, 0))
        pending = self._pending.get((period, client), [0, 0])
        return Spent((known[0] + pending[0]) / MICRO, known[1] + pending[1])

    def forget_before(self, now: float) -> None:
        """Drop what is known of days and months that have ended."""
        current = {day_period(now), month_period(now)}
        for key in [k for k in self._known if k[0] not in current]:
            del self._known[key]


class SpendRecorder(SyncPart):
    """Writes this sidecar's spending to the pool's spend HASHes and reads the clients' totals."""

    what = "the pool's spend"

    def __init__(
        self,
        client: RedisClient,
        keys: PoolKeys,
        ledger: SpendLedger,
        clients: Sequence[str],
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(client)
        self._keys = keys
        self.ledger = ledger
        self._clients = list(clients)
        self._clock = clock

    async def flush(self) -> None:
        """Write what was spent and read the totals, now (raises what the call raised; the increments
        stay here)."""
        await self.sync_alone()

    def sync(self) -> Sync:
        """Add what was spent since the last sync; the replies are the pool's totals."""
        now = self._clock()
        increments = self.ledger.take()
        periods = {day_period(now): DAY_KEEP_S, month_period(now): MONTH_KEEP_S}
        for period, _client in increments:
            periods.setdefault(period, DAY_KEEP_S if period.startswith("d") else MONTH_KEEP_S)
        asked: list[tuple[str, str]] = []
        ops: list[Op] = []
        for period, keep_s in periods.items():
            fields: list[tuple[str, int]] = []
            for client in self._clients:  # (by 0 too: the reply is the pool's total)
                micro, tokens = increments.get((period, client), (0, 0))
                usd_field, tokens_field = spend_fields([client])
                fields += [(usd_field, micro), (tokens_field, tokens)]
                asked.append((period, client))
            ops.append(Op("add", self._keys.spend(period), int(keep_s), fields))

        def took(replies: Sequence[Sequence[int]], _now: float) -> None:
            values = iter(v for reply in replies for v in reply)
            for period, client in asked:
                self.ledger.learned(period, client, next(values), next(values))
            self.ledger.forget_before(now)

        return Sync(ops, took, lambda _exc: self.ledger.give_back(increments))


async def read_spend(
    client: RedisClient, keys: PoolKeys, clients: Sequence[str], now: float
) -> dict[str, ClientSpend]:
    """Each client's spend in the day and month under way at ``now`` (the operator's status)."""
    day, month = keys.spend(day_period(now)), keys.spend(month_period(now))
    names = spend_fields(clients)
    async with client.pipeline(transaction=False) as pipe:
        pipe.hmget(day, names)
        pipe.hmget(month, names)
        day_values, month_values = await pipe.execute()
    return spend_of(clients, day_values, month_values)


def spend_fields(clients: Sequence[str]) -> list[str]:
    """The HASH fields of the clients' spend, in the order ``spend_of`` reads their values."""
    return [f"{c}:{kind}" for c in clients for kind in ("usd", "tokens")]


def spend_of(
    clients: Sequence[str],
    day_values: Sequence[bytes | str | None],
    month_values: Sequence[bytes | str | None],
) -> dict[str, ClientSpend]:
    """The HMGET replies of ``read_spend`` as each client's spend. Pure."""

    def number(value: bytes | str | None) -> int:
        try:
            return int(value) if value is not None else 0
        except ValueError:
            return 0

    out = {}
    for i, name in enumerate(clients):
        today = Spent(number(day_values[2 * i]) / MICRO, number(day_values[2 * i + 1]))
        month = Spent(number(month_values[2 * i]) / MICRO, number(month_values[2 * i + 1]))
        out[name] = ClientSpend(today, month)
    return out


@dataclass(frozen=True)
class BudgetSpent:
    """A budget a client has spent: which (``daily_usd``, ...), how much of it, and when it resets."""

    budget: str
    spent: float
    limit: float
    resets_in_s: float


def budget_spent(budgets: Budgets, spend: ClientSpend, now: float) -> BudgetSpent | None:
    """The first of the client's budgets its spending has reached (``None``: none has). Pure."""
    checks = (
        ("daily_usd", budgets.daily_usd, spend.today.usd, next_day_s(now)),
        ("daily_tokens", budgets.daily_tokens, spend.today.tokens, next_day_s(now)),
        ("monthly_usd", budgets.monthly_usd, spend.month.usd, next_month_s(now)),
        ("monthly_tokens", budgets.monthly_tokens, spend.month.tokens, next_month_s(now)),
    )
    for name, limit, spent, resets_in_s in checks:
        if limit is not None and spent >= limit:
            return BudgetSpent(name, float(spent), float(limit), resets_in_s)
    return None


def budgets_left(budgets: Budgets, spend: ClientSpend) -> dict[str, float]:
    """What is left of each budget the client has (never below 0). Pure."""
    pairs = (
        ("daily_usd", budgets.daily_usd, spend.today.usd),
        ("daily_tokens", budgets.daily_tokens, spend.today.tokens),
        ("monthly_usd", budgets.monthly_usd, spend.month.usd),
        ("monthly_tokens", budgets.monthly_tokens, spend.month.tokens),
    )
    return {name: max(0.0, limit - spent) for name, limit, spent in pairs if limit is not None}
