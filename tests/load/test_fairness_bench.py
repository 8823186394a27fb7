"""``o1pool bench`` (d) in its short mode (``fairness_bench.SHORT``), with real processes: an emulator
(two accounts x 300 RPM, headers on, the limit known), one redis-server, three sidecar processes
sharing it, one per client (Deployment/heavy, light, double; weights 1, 1, 2), and the openai SDK
offering them 10x, 1x and 3x their weighted shares.

The bounds are looser than the benchmark's targets (every client within 5% of its fair share, light
served >= 99% of what it offers) because the run is short: 20 s of warm-up and 60 s measured, about
140 of heavy's requests served in that minute. Heavy and double trade the queue's front back and forth
on the time scale of the requests' deadline, so a minute is a few such swings, not their average; the
short mode gives requests a 5 s deadline (the benchmark 15 s) so that it holds more of them. Here: light
served >= 95% of what it offered; heavy and double within 10% of their fair shares (96-102% in seven
runs here; with the benchmark's 15 s deadline, 20 s warm-up and 60 s measured, one run in six fell to
78%, and with a 40 s warm-up and 50 s measured one in four).

Then the cost of identity and budgets: the same low rate through a sidecar of no client and one whose
pod is a client with a budget makes as many EVALSHA calls per request (no extra round trip on the hot
path; the budget is checked in memory, the spend flushed in the background).
"""

from __future__ import annotations

import pytest

from o1pool.fairness_bench import (
    SHORT,
    cost_table,
    fair_rates,
    fairness_table,
    run_cost,
    run_fairness,
)
from o1pool.procs import RedisServer

LIGHT_SERVED = 0.95
FAIR_TOLERANCE = 0.10
EVALSHA_NOISE = 0.05  # a heartbeat's EVALSHA more or less in a window, over 80 requests: 0.0125


def test_fair_rates_owe_light_all_it_asks() -> None:
    # heavy, light, double: (weight, offered per second)
    demands = [(1.0, 25.0), (1.0, 2.5), (2.0, 15.0)]
    assert fair_rates(10.0, 10.0, demands) == [2.5, 2.5, 5.0]
    assert fair_rates(10.0, 8.5, demands) == [2.0, 2.5, 4.0]  # the rest of what was served, 1:2
    assert fair_rates(10.0, 2.0, demands) == [0.5, 0.5, 1.0]  # less than light asks: max-min of it


@pytest.mark.redis
@pytest.mark.slow
@pytest.mark.timeout(400)
async def test_clients_are_served_their_fair_shares(redis_server: RedisServer) -> None:
    result = await run_fairness(SHORT, redis_server)
    report = fairness_table(result)
    print(report)
    heavy, light, double = result.clients
    assert sum(c.errors for c in result.clients) == 0, report
    assert light.served_of_offered >= LIGHT_SERVED, report
    for c in (heavy, double):
        assert abs(c.fair_ratio - 1) <= FAIR_TOLERANCE, report


@pytest.mark.redis
@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_identity_and_budgets_add_no_round_trip(redis_server: RedisServer) -> None:
    no_client, budgeted = await run_cost(SHORT, redis_server)
    report = cost_table([no_client, budgeted])
    print(report)
    assert no_client.errors == budgeted.errors == 0, report
    assert no_client.evalsha >= 1.0, report  # (the admission at least: the counts are real)
    assert abs(budgeted.evalsha - no_client.evalsha) <= EVALSHA_NOISE, report
    # The spend flush runs in the background, in the heartbeat's rhythm: commands per second, not per
    # request (two periods x (HINCRBY usd, HINCRBY tokens) + two EXPIREs every 2 s = 3 a second).
    assert budgeted.background_total > no_client.background_total, report
