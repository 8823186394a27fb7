"""The Lua scripts on a real redis-server, with the scripts' clock driven by the test."""

from __future__ import annotations

import math
import subprocess
import time
from collections.abc import AsyncIterator

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from o1sidecar.config import RedisConfig
from o1sidecar.limits.api import Demand
from o1sidecar.limits.backend import AccountLimits, Admitted, Attempt, Denied, Settlement, Waiting
from o1sidecar.limits.balancing import Candidate, choose
from o1sidecar.limits.buckets import UPSTREAM_LAG_S, Bucket
from o1sidecar.limits.keys import PoolKeys, hash_slot
from o1sidecar.limits.shared import RedisBackend, redis_client
from redis.asyncio import Redis

from o1pool.procs import RedisServer, free_port
from tests.conftest import require_binary

from .helpers import Clock

pytestmark = pytest.mark.redis

KEYS = PoolKeys("o1pool", "ns", "pool")
A = AccountLimits("a", rpm=60, tpm=6_000, concurrency=1)
B = AccountLimits("b", rpm=60, tpm=6_000, concurrency=None)
LEASE_TTL = 10.0
TICKET_TTL = 7.0


@pytest.fixture
async def client(redis_server: RedisServer) -> AsyncIterator[Redis]:
    c = redis_client(RedisConfig(url=redis_server.url))
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


async def levels(client: Redis, account: str = "a") -> tuple[float, float]:
    r, t = await client.hmget(KEYS.account(account, "m"), "r", "t")
    return float(r), float(t)


async def test_exact_accounting_and_refill(store: RedisBackend, client: Redis, clock: Clock) -> None:
    lag = UPSTREAM_LAG_S  # a full bucket also gives up the refill the upstream makes only on arrival
    assert isinstance(await store.attempt(attempt("1", tokens=1_000)), Admitted)
    assert await levels(client) == pytest.approx((59.0 - lag, 5_000.0 - 100 * lag))
    await store.settle(Settlement(A, "m", "1"))
    clock.t += 0.5 + lag  # refill: 1 request and 100 tokens per second
    assert isinstance(await store.attempt(attempt("2", tokens=5_000)), Admitted)
    assert await levels(client) == pytest.approx((58.5, 50.0), abs=1e-6)
    await store.settle(Settlement(A, "m", "2", extra_tokens=250))  # used more than charged
    assert await levels(client) == pytest.approx((58.5, -200.0), abs=1e-6)
    denied = await store.attempt(attempt("3", tokens=100))
    assert isinstance(denied, Denied) and denied.reason == "capacity"
    assert denied.wait_s == pytest.approx(3.0, abs=0.002)  # 300 tokens short at 100/s, in whole ms


async def test_rpm_and_tpm_are_charged_both_or_neither(store: RedisBackend, client: Redis) -> None:
    assert isinstance(await store.attempt(attempt("1", tokens=6_000)), Admitted)
    await store.settle(Settlement(A, "m", "1"))
    spent = pytest.approx((59.0 - UPSTREAM_LAG_S, -100 * UPSTREAM_LAG_S))
    assert await levels(client) == spent
    denied = await store.attempt(attempt("2", tokens=1))
    assert isinstance(denied, Denied)
    assert await levels(client) == spent  # no request charged for the denied attempt


async def test_concurrency_leases_expire_unless_renewed(store: RedisBackend, clock: Clock) -> None:
    assert isinstance(await store.attempt(attempt("1")), Admitted)
    denied = await store.attempt(attempt("2"))
    assert isinstance(denied, Denied) and denied.reason == "concurrency"
    clock.t += LEASE_TTL - 1
    await store.heartbeat("sidecar-1", 2.0, [], [(A, "m")])  # renews lease "1": it is still held
    clock.t += 2
    assert isinstance(await store.attempt(attempt("2")), Denied)
    clock.t += LEASE_TTL  # the sidecar died: nobody renews, the lease expires
    assert isinstance(await store.attempt(attempt("2")), Admitted)


async def test_released_lease_frees_the_slot_at_once(store: RedisBackend) -> None:
    assert isinstance(await store.attempt(attempt("1")), Admitted)
    await store.settle(Settlement(A, "m", "1"))
    assert isinstance(await store.attempt(attempt("2")), Admitted)


async def test_cooldown_only_extends(store: RedisBackend, client: Redis, clock: Clock) -> None:
    now = clock.t
    await store.settle(Settlement(B, "m", "x", cooldown_s=10.0))
    await store.settle(Settlement(B, "m", "y", cooldown_s=2.0))
    assert float(await client.hget(KEYS.account("b", "m"), "cd")) == now + 10.0
    denied = await store.attempt(attempt("1", accounts=(B,)))
    assert isinstance(denied, Denied) and denied.reason == "cooldown" and denied.wait_s == 10.0
    clock.t += 10.0
    assert isinstance(await store.attempt(attempt("1", accounts=(B,))), Admitted)
    await store.settle(Settlement(B, "m", "z", cooldown_s=30.0))
    assert float(await client.hget(KEYS.account("b", "m"), "cd")) == clock.t + 30.0


async def test_lower_remaining_wins_higher_is_ignored(store: RedisBackend, client: Redis) -> None:
    assert isinstance(await store.attempt(attempt("1", accounts=(B,))), Admitted)
    await store.settle(Settlement(B, "m", "1", remaining_requests=59, remaining_tokens=5_999))
    ours = pytest.approx((59.0 - UPSTREAM_LAG_S, 5_900.0 - 100 * UPSTREAM_LAG_S))
    assert await levels(client, "b") == ours  # ours was lower: kept
    await store.settle(Settlement(B, "m", "-", remaining_requests=10, remaining_tokens=1_000, elapsed_s=2.0))
    assert await levels(client, "b") == (12.0, 1_200.0)  # theirs, carried forward 2 s of refill


async def test_better_ticket_blocks_until_expired(store: RedisBackend, clock: Clock) -> None:
    assert isinstance(await store.attempt(attempt("busy")), Admitted)
    high = await store.attempt(attempt("high", priority=9))
    assert isinstance(high, Denied)
    await store.settle(Settlement(A, "m", "busy"))
    low = await store.attempt(attempt("low", priority=1))
    assert isinstance(low, Denied) and low.reason == "queue"  # the slot is the high ticket's
    clock.t += TICKET_TTL + 0.1  # the high ticket's sidecar died and stopped refreshing it
    assert isinstance(await store.attempt(attempt("low", priority=1)), Admitted)


async def test_heartbeat_refreshes_tickets_and_counts_live_sidecars(
    store: RedisBackend, clock: Clock
) -> None:
    assert isinstance(await store.attempt(attempt("busy")), Admitted)
    assert isinstance(await store.attempt(attempt("high", priority=9)), Denied)
    await store.settle(Settlement(A, "m", "busy"))
    live, _ = await store.heartbeat("s1", 2.0, [], [])
    assert live == 1
    clock.t += TICKET_TTL - 1
    live, usage = await store.heartbeat("s2", 2.0, [Waiting("m", "high", 0.0, 100)], [(A, "m")])
    assert live == 1  # s1 is 6 s old: stale after 3 heartbeat intervals
    assert usage[("a", "m")]["requests"] == 0.0  # fully refilled after 6 s
    clock.t += 2
    assert isinstance(await store.attempt(attempt("low", priority=1)), Denied)  # still blocked


async def test_scripts_reload_after_script_flush(store: RedisBackend, client: Redis) -> None:
    await store.scripts.load_all(client)
    assert isinstance(await store.attempt(attempt("1", accounts=(B,))), Admitted)
    await client.script_flush()
    assert isinstance(await store.attempt(attempt("2", accounts=(B,))), Admitted)
    await client.script_flush()
    await store.settle(Settlement(B, "m", "1"))
    await client.script_flush()
    assert (await store.heartbeat("s", 2.0, [], []))[0] == 1


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


async def test_every_key_of_a_pool_shares_one_hash_slot(store: RedisBackend, client: Redis) -> None:
    assert isinstance(await store.attempt(attempt("1")), Admitted)
    assert isinstance(await store.attempt(attempt("2")), Denied)
    await store.heartbeat("s", 2.0, [], [(A, "m")])
    stored = [k async for k in client.scan_iter("*")]
    assert len(stored) >= 5
    assert {hash_slot(k) for k in stored} == {hash_slot(KEYS.tag)}
    assert all(k.startswith("{o1pool:ns/pool}:") for k in stored)


def _cluster_node(binary: str) -> RedisServer:
    """A cluster-enabled redis-server (it answers CLUSTER KEYSLOT without any slots assigned)."""
    for _ in range(3):  # the free port may be taken by someone else in between: try another
        server = RedisServer(binary=binary, port=free_port())
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
        server.close()
    raise RuntimeError("could not start a cluster-enabled redis-server")


def test_hash_slot_agrees_with_redis_cluster() -> None:
    binary = require_binary("redis-server", "install it with: apt-get install -y redis-server")
    server = _cluster_node(binary)
    try:
        c = redis.Redis(port=server.port)
        names = [
            KEYS.account("acct-1", "o1-mini"),
            KEYS.leases("acct-1", "o1-mini"),
            KEYS.queue("o1-mini"),
            KEYS.ticket_expiry("o1"),
            KEYS.ticket_cost("o1"),
            KEYS.sidecars(),
            "123456789",
            "plain",
        ]
        for name in names:
            assert c.cluster("KEYSLOT", name) == hash_slot(name)
        assert len({c.cluster("KEYSLOT", n) for n in names[:6]}) == 1
    finally:
        server.close()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(
        st.tuples(st.floats(0, 60), st.floats(0, 6_000), st.floats(0, 1), st.floats(0.5, 2)),
        min_size=1,
        max_size=4,
    ),
    st.integers(1, 6_000),
)
async def test_lua_picks_the_account_python_picks(
    client: Redis, clock: Clock, specs: list[tuple[float, float, float, float]], tokens: int
) -> None:
    await client.flushall()
    store = RedisBackend(client, KEYS, lease_ttl_s=LEASE_TTL, ticket_ttl_s=TICKET_TTL, server_clock=clock)
    accounts, cands = [], []
    for i, (r, t, health, weight) in enumerate(specs):
        name = f"acct{i}"
        await client.hset(KEYS.account(name, "m"), mapping={"r": repr(r), "t": repr(t), "ts": repr(clock.t)})
        accounts.append(AccountLimits(name, 60, 6_000, None, weight, health))
        rpm, tpm = Bucket(60, r, clock.t), Bucket(6_000, t, clock.t)
        cands.append(Candidate(name, rpm, tpm, None, 0.0, health, weight))
    expected = choose(cands, tokens, clock.t)
    got = await store.attempt(attempt(f"t{len(specs)}", tokens=tokens, accounts=tuple(accounts)))
    if expected is None:
        assert isinstance(got, Denied)
    else:
        assert isinstance(got, Admitted) and got.account == expected.name
