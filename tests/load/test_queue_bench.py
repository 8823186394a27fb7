"""``o1pool bench`` (e) in its short mode (``queuebench.SHORT``), with real processes: an emulator (two
accounts x 300 RPM), one redis-server, four sidecar processes, and the openai SDK offering three times
the pool's capacity at priorities 2, 5 and 8, once with a 10 s deadline and once with a 30 s one (three
times the waiters). Redis MONITOR counts what the sidecars send.

Waiting is event-driven: a waiter is asked for only when the store names it the queue's head or its
own predicted time comes, and a waiter that times out costs no call. A request that would only queue
behind its sidecar's own waiter does not ask on arrival: it joins the store's queue with the
admission of the waiter ahead of it. A head that a better-ranked arrival displaces is told so, and
asks only when named again. The pool's sync rides along with the heartbeat. So the round trips per
upstream call stay near the floor (the head's attempt and the release, plus the arrivals that outrank
their sidecar's waiters, plus one heartbeat a sidecar per interval), and do not grow with the number
of waiters. Before, every sidecar's dispatcher polled every 250 ms and every release woke them all:
17 admission scripts and 21 limiter round trips per upstream call in the benchmark; then every
arrival asked once: 6.2-6.6; then 3.2-3.5, with 0.8 more for the sidecars' other state.
"""

from __future__ import annotations

import pytest

from o1pool.procs import RedisServer
from o1pool.queuebench import SHORT, queue_table, run_queue_cost

ROUND_TRIPS_PER_CALL = 3.2  # all the sidecars send; measured 2.76-2.84 here (the target: 3)
MORE_WAITERS_COST = 1.25  # the long deadline's admission scripts per call, at most this x the short's


@pytest.mark.redis
@pytest.mark.slow
@pytest.mark.timeout(400)
async def test_waiting_costs_redis_per_call_not_per_waiter(redis_server: RedisServer) -> None:
    short, long = [await run_queue_cost(SHORT, redis_server, d) for d in SHORT.deadlines_ms]
    report = queue_table([short, long])
    print(report)
    for run in (short, long):
        assert run.errors == 0 and run.upstream_calls > 0.9 * SHORT.capacity_rps * SHORT.measure_s, report
        assert run.per_call(run.round_trips) <= ROUND_TRIPS_PER_CALL, report
        assert run.wait_p95_s[8] <= 1.0, report  # high priority still goes first
    assert long.waiters_p50 >= 1.5 * short.waiters_p50, report  # (more waiters: the point of the run)
    admit_short, admit_long = (r.per_call(r.sent["EVALSHA admit"]) for r in (short, long))
    assert admit_long <= MORE_WAITERS_COST * admit_short, report
