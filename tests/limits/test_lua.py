"""The Lua scripts on a real redis-server, with the scripts' clock driven by the test: the same rule as
rule.py (a property test runs both side by side and compares every decision and every field), plus
what only Redis does (leases and tickets that expire, scripts reloaded after a flush, one slot)."""

from __future__ import annotations

import dataclasses
import math
import re
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest
import redis
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis

from o1pool.procs import RedisServer, free_port
from o1sidecar.config import RedisConfig
from o1sidecar.limits import caps, rule
from o1sidecar.limits.api import Demand
from o1sidecar.limits.backend import AccountLimits, Admitted, Attempt, Denied, Settlement, Waiting
from o1sidecar.limits.caps import Cap
from o1sidecar.limits.keys import PoolKeys
from o1sidecar.limits.local import LocalBackend
from o1sidecar.limits.redis_store import RedisBackend, redis_client
from o1sidecar.limits.scripts import lua_source
from tests.conftest import require_binary

from .helpers import Clock, redis_state

pytestmark = pytest.mark.redis

KEYS = PoolKeys("o1pool", "ns", "pool")
# The configured limits stand (adaptive: false, so no slow start): these tests are about the store.
# What adapts is test_rule.py's, and the property test below runs both rules on adaptive accounts.
A = AccountLimits("a", rpm=60, tpm=6_000, concurrency=1, adaptive=False)
B = AccountLimits("b", rpm=60, tpm=6_000, concurrency=None, adaptive=False)
LEASE_TTL = 10.0
TICKET_TTL = 7.0


@pytest.fixture
async def client(redis_server: RedisServer) -> AsyncIterator[Redis]:
    # Generous timeouts: this checks the rule, not latency (CI runs it next to a control plane).
    c = redis_client(RedisConfig(url=redis_server.url, op_timeout_ms=5000, connect_timeout_ms=5000))
    yield c
    await c.aclose()


@pytest.fixture
def clock() -> Clock:
    return Clock(1_000_000.0)


@pytest.fixture
def store(client: Redis, clock: Clock) -> RedisBackend:
    return RedisBackend(client, KEYS, lease_ttl_s=LEASE_TTL, ticket_ttl_s=TICKET_TTL, server_clock=clock)


def attempt(
    ticket: str, tokens: int = 100, priority: int = 5, accounts: tuple[AccountLimits, ...] = (A,)
) -> Attempt:
    return Attempt(Demand("m", tokens, priority, math.inf), accounts, ticket, ticket, None, aging_s=30.0)


async def dump(client: Redis, account: AccountLimits, now: float) -> dict[str, str]:
    return await redis_state(client, KEYS, account, "m", now)


async def test_pacing_window_and_exact_accounting(store: RedisBackend, client: Redis, clock: Clock) -> None:
    b = replace(B, burst_s=60.0)  # a whole minute's burst: the window is what holds it
    for i in range(60):
        assert isinstance(await store.attempt(attempt(f"{i}", accounts=(b,))), Admitted)
    state = await dump(client, b, clock.t)
    # the burst fills its log for a minute: the bucket holds no more than refills by then
    assert (float(state["r"]), float(state["wn"]), float(state["wt"])) == (-59.0, 60.0, 6_000.0)
    clock.t += 30.0
    denied = await store.attempt(attempt("x", accounts=(b,)))
    assert isinstance(denied, Denied) and denied.reason == "capacity"
    assert denied.wait_s == pytest.approx(rule.WINDOW_S - 30.0, abs=0.001)
    clock.t += rule.WINDOW_S - 30.0
    assert isinstance(await store.attempt(attempt("x", accounts=(b,))), Admitted)


async def test_concurrency_leases_expire_unless_renewed(store: RedisBackend, clock: Clock) -> None:
    assert isinstance(await store.attempt(attempt("1")), Admitted)
    clock.t += 1.0
    denied = await store.attempt(attempt("2"))
    assert isinstance(denied, Denied) and denied.reason == "concurrency"
    clock.t += LEASE_TTL - 2
    await store.heartbeat("sidecar-1", 2.0, [], [(A, "m")])  # renews lease "1": it is still held
    clock.t += 2
    assert isinstance(await store.attempt(attempt("2")), Denied)
    clock.t += LEASE_TTL  # the sidecar died: nobody renews, the lease expires
    assert isinstance(await store.attempt(attempt("2")), Admitted)


async def test_released_lease_frees_the_slot_at_once(store: RedisBackend, clock: Clock) -> None:
    assert isinstance(await store.attempt(attempt("1")), Admitted)
    await store.settle(Settlement(A, "m", "1"))
    clock.t += 1.0  # one request per second at 60 RPM
    assert isinstance(await store.attempt(attempt("2")), Admitted)


async def test_better_ticket_blocks_until_expired(store: RedisBackend, clock: Clock) -> None:
    assert isinstance(await store.attempt(attempt("busy")), Admitted)
    high = await store.attempt(attempt("high", priority=9))
    assert isinstance(high, Denied)
    await store.settle(Settlement(A, "m", "busy"))
    clock.t += 1.0
    low = await store.attempt(attempt("low", priority=1))
    assert isinstance(low, Denied) and low.reason == "queue"  # the slot is the high ticket's
    clock.t += TICKET_TTL + 0.1  # the high ticket's sidecar died and stopped refreshing it
    assert isinstance(await store.attempt(attempt("low", priority=1)), Admitted)


async def test_a_try_leaves_no_ticket(store: RedisBackend, client: Redis) -> None:
    assert isinstance(await store.attempt(attempt("busy")), Admitted)
    denied = await store.attempt(replace(attempt("try"), queue=False))
    assert isinstance(denied, Denied)
    assert await client.zcard(KEYS.queue("m")) == 0


async def test_heartbeat_refreshes_tickets_counts_live_sidecars_and_reads_usage(
    store: RedisBackend, clock: Clock
) -> None:
    assert isinstance(await store.attempt(attempt("busy")), Admitted)
    assert isinstance(await store.attempt(attempt("high", priority=9)), Denied)
    await store.settle(Settlement(A, "m", "busy"))
    beat = await store.heartbeat("s1", 2.0, [], [])
    assert beat.live_sidecars == 1
    clock.t += TICKET_TTL - 1
    capped = replace(A, daily=10)
    beat = await store.heartbeat("s2", 2.0, [Waiting("m", "high", 0.0, 100)], [(capped, "m")])
    assert beat.live_sidecars == 1  # s1 is 6 s old: stale after 3 heartbeat intervals
    usage = beat.usage[("a", "m")]
    assert usage.requests_ratio == pytest.approx(1 / 60) and usage.effective_rpm == 60.0
    assert usage.daily_left == 9 and usage.monthly_left is None
    assert store.snapshot().usage == beat.usage
    clock.t += 2
    assert isinstance(await store.attempt(attempt("low", priority=1)), Denied)  # still blocked


async def test_a_new_adaptive_account_reports_its_slow_start(store: RedisBackend, clock: Clock) -> None:
    adaptive = replace(B, adaptive=True)
    assert isinstance(await store.attempt(attempt("1", accounts=(adaptive,))), Admitted)
    clock.t += 30.0
    beat = await store.heartbeat("s1", 2.0, [], [(adaptive, "m")])
    assert beat.usage[("b", "m")].effective_rpm == pytest.approx(45.0)  # half-way from 50% to all of it
    clock.t += 30.0
    beat = await store.heartbeat("s1", 2.0, [], [(adaptive, "m")])
    assert beat.usage[("b", "m")].effective_rpm == pytest.approx(60.0)


async def test_eta_counts_the_queue_ahead_at_the_effective_rate(store: RedisBackend, clock: Clock) -> None:
    assert isinstance(await store.attempt(attempt("w0", priority=9)), Admitted)  # takes the one slot
    for i in (1, 2):
        assert isinstance(await store.attempt(attempt(f"w{i}", priority=9)), Denied)
    eta = await store.eta(attempt("me", priority=1))
    # A holds its next request in 1 s (60 RPM), then the two ahead go first, one per second.
    assert eta == pytest.approx(1.0 + 2 / 1.0)


@pytest.mark.parametrize("waiting", [3, 64, 90])
async def test_a_denials_eta_is_what_the_eta_script_says_however_long_the_queue(
    store: RedisBackend, clock: Clock, waiting: int
) -> None:
    """admit.lua reuses what it read of the queue ahead (up to AHEAD_LIMIT) for its denial's eta, and
    reads the rest only for a longer queue: either way the eta is eta.lua's."""
    assert isinstance(await store.attempt(attempt("w", priority=9)), Admitted)  # takes the one slot
    for i in range(waiting):
        assert isinstance(await store.attempt(attempt(f"w{i:03}", tokens=50 + i, priority=9)), Denied)
    for ticket, priority in (("new", 1), ("w005", 9)):  # (a new waiter behind all; one in line)
        denied = await store.attempt(attempt(ticket, priority=priority))
        assert isinstance(denied, Denied) and denied.eta_s is not None
        assert denied.eta_s == pytest.approx(await store.eta(attempt(ticket, priority=priority)), abs=0.0011)


async def test_scripts_reload_after_script_flush(store: RedisBackend, client: Redis) -> None:
    await store.scripts.load_all(client)
    assert isinstance(await store.attempt(attempt("1", accounts=(B,))), Admitted)
    await client.script_flush()
    assert isinstance(await store.attempt(attempt("2", accounts=(B,), tokens=1)), Denied)
    await client.script_flush()
    await store.settle(Settlement(B, "m", "1"))
    await client.script_flush()
    assert (await store.heartbeat("s", 2.0, [], [])).live_sidecars == 1
    await client.script_flush()
    assert await store.eta(attempt("3", accounts=(B,))) > 0


async def test_fast_path_is_one_evalsha(store: RedisBackend, client: Redis) -> None:
    await store.scripts.load_all(client)
    calls: list[tuple[object, ...]] = []
    original = client.execute_command

    async def counting(*args: object, **kwargs: object) -> object:
        calls.append(args)
        return await original(*args, **kwargs)

    client.execute_command = counting  # type: ignore[method-assign]
    assert isinstance(await store.attempt(attempt("1", accounts=(A, B))), Admitted)
    assert [c[0] for c in calls] == ["EVALSHA"]


def _cluster_node(binary: str) -> RedisServer:
    """A cluster-enabled redis-server (it answers CLUSTER KEYSLOT without any slots assigned)."""
    why = ""
    for _ in range(6):  # the free port may be taken by someone else in between: try another
        server = RedisServer(binary=binary, port=free_port())
        log = server.workdir / "redis.log"
        server.proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(server.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                str(server.workdir / "nodes.conf"),
                "--dir",
                str(server.workdir),
                "--logfile",
                str(log),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while server.proc.poll() is None and time.monotonic() < deadline:
            try:
                redis.Redis(port=server.port, socket_timeout=1).ping()
                return server
            except redis.ConnectionError:
                time.sleep(0.05)
        why = log.read_text()[-2000:] if log.exists() else f"exit status {server.proc.poll()}, no log"
        server.close()
    raise RuntimeError(f"could not start a cluster-enabled redis-server; the last one said:\n{why}")


async def test_every_key_of_a_pool_lands_in_one_cluster_slot(
    store: RedisBackend, client: Redis, clock: Clock
) -> None:
    """Every key the scripts touched, asked of a real cluster-enabled Redis: one slot for the pool."""
    assert isinstance(await store.attempt(attempt("1")), Admitted)
    assert isinstance(await store.attempt(attempt("2")), Denied)
    await store.settle(Settlement(A, "m", "0", outcome="ok"))  # writes the account's state
    await store.heartbeat("s", 2.0, [], [(A, "m")])
    stored = [k async for k in client.scan_iter("*")]
    assert {k.split(":", 2)[2].split(":")[0] for k in stored} >= {"acct", "lease", "win", "queue", "sidecars"}
    assert all(k.startswith("{o1pool:ns/pool}:") for k in stored)
    binary = require_binary("redis-server", "install it with: apt-get install -y redis-server")
    server = _cluster_node(binary)
    try:
        node = redis.Redis(port=server.port)
        assert len({node.cluster("KEYSLOT", k) for k in stored}) == 1
        assert node.cluster("KEYSLOT", "{o1pool:ns/other}:x") != node.cluster("KEYSLOT", stored[0])
    finally:
        server.close()


# -- one rule, two implementations -----------------------------------------------------------------


def test_the_lua_state_has_exactly_the_python_fields() -> None:
    lua = re.search(r"local FIELDS = \{(.*?)\}", lua_source("rule"), re.S)
    assert lua is not None
    assert tuple(re.findall(r"'(\w+)'", lua.group(1))) == rule.LUA_FIELDS
    python = {f.name for f in dataclasses.fields(rule.AccountModel)} - {"window", "leases"}
    assert python == set(rule.LUA_FIELDS)


ACCOUNTS = (
    AccountLimits("a", rpm=600, tpm=60_000, concurrency=2, daily=3, max_cooldown_s=20.0, weight=3.0),
    AccountLimits("b", rpm=120, tpm=3_000, concurrency=None, burst_s=5.0, monthly=6, weight=2.0),
    AccountLimits("c", rpm=30, tpm=50_000, concurrency=None, adaptive=False, health=0.5),
    AccountLimits("d", rpm=12, tpm=12_000, concurrency=None, burst_s=60.0),
)
TICKETS = {f"t{i}": p for i, p in enumerate((9, 5, 5, 2))}  # ticket -> priority
# ticket -> the pool's client it is from, its weight (fairness.py; "" none) and its own limits (caps.py)
WEB, BATCH = Cap(rpm=None, tpm=9_000), Cap(rpm=3, tpm=12_000)
CLIENTS = {
    "t0": ("", 1.0, None),
    "t1": ("web", 1.0, WEB),
    "t2": ("batch", 2.0, BATCH),
    "t3": ("web", 1.0, WEB),
}
# ticket -> its deadline from now: batch's is short, so its places may fall past it
DEADLINES = {t: (lambda now: now + 2.0) if t == "t2" else (lambda now: math.inf) for t in TICKETS}

advance = st.tuples(
    st.just("advance"), st.sampled_from([0.01, 0.3, 1.0, 1.0, 2.5, 9.0, 31.0, 61.0, 40_000.0])
)
try_admit = st.tuples(
    st.just("attempt"),
    st.sampled_from(sorted(TICKETS)),
    st.lists(st.sampled_from(range(len(ACCOUNTS))), min_size=1, max_size=3, unique=True),
    st.sampled_from([1, 100, 2_500, 7_000]),
    st.booleans(),  # queue
)
settle = st.tuples(
    st.just("settle"),
    st.integers(0, 10),  # which held lease
    st.sampled_from(["ok", "rate_limited", "rate_limited", "other"]),
    st.sampled_from([None, "requests", "tokens", "concurrency", "quota"]),
    st.sampled_from([None, 0.5, 5.0, 100.0]),  # retry-after
    st.sampled_from([None, 0, 3]),  # remaining requests
    st.sampled_from([None, 10, 90, 1_000]),  # upstream's limit header (requests)
    st.sampled_from([0, 500]),  # extra tokens
    st.sampled_from([None, 0.5, 60.0]),  # x-ratelimit-reset-* (long: a per-minute count)
    st.booleans(),  # the same remaining and limit headers for tokens (x 100)
)
estimate = st.tuples(st.just("eta"), st.sampled_from(sorted(TICKETS)))
leave = st.tuples(st.just("forget"), st.sampled_from(sorted(TICKETS)))  # a waiter gives up
operations = st.lists(
    st.one_of(advance, try_admit, try_admit, settle, settle, estimate, leave), min_size=10, max_size=80
)


def _same_state(py: rule.AccountModel, lua: dict[str, str]) -> None:
    for field in rule.LUA_FIELDS:
        ours, theirs = getattr(py, field), lua[field]
        if field == "pl":
            assert ours == theirs, field
        else:
            assert float(theirs) == pytest.approx(float(ours), rel=1e-9, abs=1e-6), field
    assert int(lua["inflight"]) == len(py.leases)


async def _same_windows(client: Redis, local: LocalBackend, now: float) -> None:
    """Each client's window (caps.py) holds the same calls and tokens in both stores."""
    totals = await client.hgetall(KEYS.client_tokens())
    for name in ("web", "batch"):
        window = local.client_window(name)
        if window is None:
            assert not await client.exists(KEYS.client_window(name))
            continue
        caps.refresh(window, now)
        stored = await client.zrange(KEYS.client_window(name), 0, -1, withscores=True)
        # The HASH's total is its window's, aged-out entries included until a script drops them.
        assert float(totals.get(name, 0)) == sum(int(member.split(":")[0]) for member, _ in stored)
        live = sorted((at, member) for member, at in stored if at > now - caps.WINDOW_S)
        assert live == sorted((e.at, f"{e.tokens}:{e.lease}") for e in window.entries)
        assert window.tokens == sum(e.tokens for e in window.entries)


EPISODES = [
    ("attempt", "t1", [1], 100, True),
    ("settle", 0, "rate_limited", None, 0.5, None, None, 0),  # episode 1: cut, debt, cooldown, probe
    ("advance", 2.5),
    ("attempt", "t1", [1], 100, True),  # the probe
    ("attempt", "t2", [1], 100, True),  # held behind it
    ("settle", 0, "rate_limited", "tokens", None, None, None, 0),  # episode 2: deeper cut, 4 s
    ("advance", 2.5),
    ("attempt", "t2", [1], 100, True),
    ("eta", "t3"),
    ("advance", 9.0),
    ("attempt", "t2", [1], 100, True),
    ("settle", 0, "ok", None, None, 3, 90, 500),  # the probe got in: the run ends; a lower limit header
]
FIRST_MINUTE = [
    *[("attempt", "t1", [3], 100, False)] * 6,  # a minute's burst allowed: 6 at once
    ("settle", 5, "rate_limited", "requests", None, None, None, 0),  # young window: a plain cut
    *[
        op
        for _ in range(rule.PROBES_TO_ESTIMATE)
        for op in (
            ("advance", 9.0),
            ("attempt", "t1", [3], 100, False),  # the probe...
            ("settle", 5, "rate_limited", "requests", None, None, None, 0),  # ...refused again
        )
    ],  # the last cuts to what the window holds (8 of 12)
    ("advance", 9.0),
    ("attempt", "t1", [3], 100, False),
]
# The upstream counts about twice the requests and tokens the pool logged, per minute (a long reset):
# both ceilings go to what the pool logged of the upstream's count.
CALIBRATION = [
    *[("attempt", "t1", [3], 100, False)] * 6,
    ("settle", 5, "ok", None, None, 0, 12, 0, 60.0, True),  # 12 counted, 6 logged
    ("attempt", "t1", [3], 100, False),
]
CAPS = [
    *[op for i in range(3) for op in (("attempt", "t0", [0], 1, False), ("settle", 0, "ok", *[None] * 4, 0))],
    ("attempt", "t0", [0], 1, False),  # the daily cap (3) is spent: quota
    ("eta", "t0"),
    ("advance", 40_000.0),  # past midnight UTC
    ("attempt", "t0", [0], 1, False),
]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(operations)
@example(EPISODES)
@example(CAPS)
@example(FIRST_MINUTE)
@example(CALIBRATION)
async def test_lua_and_python_apply_the_same_rule(client: Redis, ops: list[tuple[object, ...]]) -> None:
    await client.flushall()
    clock = Clock(1_780_000_000.0)  # 2026-05-28: calendar caps roll over within the run
    big = 1e9  # no lease or ticket expiry: the in-process store has none
    redis_store = RedisBackend(client, KEYS, lease_ttl_s=big, ticket_ttl_s=big, server_clock=clock)
    local = LocalBackend(clock=clock)
    held: list[tuple[str, AccountLimits, float, int, str]] = []  # lease, account, admitted at, tokens, client
    n = 0
    for op in ops:
        if op[0] == "advance":
            clock.t += float(op[1])  # type: ignore[arg-type]
        elif op[0] == "attempt":
            _, ticket, which, tokens, queue = op
            n += 1
            accounts = tuple(ACCOUNTS[i] for i in which)  # type: ignore[attr-defined]
            demand = Demand("m", tokens, TICKETS[ticket], DEADLINES[ticket](clock.t), *CLIENTS[ticket])  # type: ignore[arg-type, index]
            a = Attempt(demand, accounts, ticket, f"lease{n}", None, 30.0, queue=bool(queue))  # type: ignore[arg-type]
            ours, theirs = local.attempt_now(a), await redis_store.attempt(a)
            if isinstance(ours, Admitted):
                assert theirs == ours
                account = next(x for x in accounts if x.name == ours.account)
                held.append((a.lease_id, account, clock.t, tokens, demand.client))  # type: ignore[arg-type]
            else:
                assert isinstance(theirs, Denied), (ours, theirs)
                assert theirs.wait_s == pytest.approx(ours.wait_s, abs=0.0011)
                # Two accounts blocked for the same time (to the last bit of a float, which the two
                # languages may round apart) are one decision whichever block is named.
                assert theirs.reason == ours.reason or abs(theirs.wait_s - ours.wait_s) < 1e-9
                assert theirs.rank == pytest.approx(ours.rank)
                if ours.eta_s is not None:  # (when it could be admitted: queue.lua's queue_eta)
                    assert theirs.eta_s == pytest.approx(ours.eta_s, abs=0.0011)
                else:
                    assert theirs.eta_s is None
        elif op[0] == "settle" and held:
            _, index, outcome, limit_type, retry, remaining, limit, extra, *more = op
            reset, tokens_too = more if more else (None, False)  # EPISODES and CAPS leave them out
            # tokens_too: the same headers for tokens, x 100
            tokens_left = 100 * remaining if tokens_too and remaining is not None else None  # type: ignore[operator]
            tokens_limit = 100 * limit if tokens_too and limit is not None else None  # type: ignore[operator]
            lease, account, admitted_at, tokens, by = held.pop(int(index) % len(held))  # type: ignore[arg-type]
            s = Settlement(
                account,
                "m",
                lease,
                outcome=outcome,
                extra_tokens=extra,
                charged_tokens=tokens,
                remaining_requests=remaining,  # type: ignore[arg-type]
                limit_requests=limit,
                remaining_tokens=tokens_left,
                limit_tokens=tokens_limit,
                reset_requests_s=reset,  # type: ignore[arg-type]
                reset_tokens_s=reset,  # type: ignore[arg-type]
                elapsed_s=clock.t - admitted_at,
                retry_after_s=retry,  # type: ignore[arg-type]
                limit_type=limit_type if outcome == "rate_limited" else None,  # type: ignore[arg-type]
                client=by,
            )
            local.settle_now(s)
            await redis_store.settle(s)

        elif op[0] == "forget":
            local.forget_now("m", [str(op[1])])
            await redis_store.forget("m", [str(op[1])])
        elif op[0] == "eta":
            a = Attempt(Demand("m", 100, TICKETS[op[1]], math.inf), ACCOUNTS, str(op[1]), "-", None, 30.0)  # type: ignore[index]
            assert await redis_store.eta(a) == pytest.approx(local.eta_now(a), rel=1e-9, abs=1e-6)
        fair = await client.hgetall(KEYS.fair_share("m"))
        ours_fair = {
            f"{k}:{c}": v for c, s in local.shares("m").items() for k, v in (("f", s.finish), ("w", s.weight))
        }
        assert {k: float(v) for k, v in fair.items()} == pytest.approx(ours_fair, rel=1e-12)
        await _same_windows(client, local, clock.t)
        for account in ACCOUNTS:
            py = local.state_of(account.name, "m")
            if py is None:
                continue
            rule.refresh(py, local.limits_of(account), clock.t)
            _same_state(py, await dump(client, account, clock.t))
