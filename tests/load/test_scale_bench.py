"""``o1pool bench`` (f), short: simulated sidecars (the sidecar's own limiter, in worker processes)
against a real redis-server and a real three-primary Redis Cluster, at 10 and 100 sidecars; and the
checker that judges it, on hand-made logs.

The run's assertions are about counts, not timing: the checker found no limit exceeded in the log of
admissions, the pools were used near their capacity (admissions counted against what the limits
allow in the measured seconds), and every request offered got an outcome.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from o1pool.procs import RedisServer
from o1pool.rediscluster import LocalCluster
from o1pool.scalebench import (
    AccountLimits,
    Admission,
    CellResult,
    ScaleSettings,
    Servers,
    check,
    max_in_window,
    outcome_table,
    pool_names,
    run_cell,
    scale_table,
)

SHORT = ScaleSettings(workers=2, warmup_s=2.0, measure_s=6.0, deadline_s=10.0)
OUTCOMES = {"admitted", "timed out", "handed back"}


def _judge(r: CellResult) -> None:
    report = f"{scale_table([r])}\n{outcome_table([r])}"
    print(report)
    assert r.checked > 0 and r.violations == [], report  # the checker read the log and found nothing
    assert r.lost == 0 and sum(r.outcomes.values()) == r.requests > 0, report  # every request answered
    assert set(r.outcomes) <= OUTCOMES, report  # (no refusal, no error)
    assert r.utilisation >= 0.8, report  # admitted near what the limits allow, at 3x overload
    assert r.most_in_window["burst"] >= 1, report


@pytest.mark.redis
@pytest.mark.timeout(120)
async def test_simulated_sidecars_on_one_redis_and_a_cluster_exceed_no_limit(
    redis_server: RedisServer, redis_cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory
) -> None:
    single = Servers("single", single=redis_server)
    for sidecars in (10, 100):
        _judge(await run_cell(SHORT, single, sidecars, 1, log_dir=tmp_path_factory.mktemp("single")))

    # Three pools, one per primary: the cluster spreads pools (a pool's keys share one slot).
    owners = {redis_cluster.primary_of_key("{o1pool:scale/" + name + "}").port for name in pool_names(3)}
    assert len(owners) == 3
    cluster = Servers("cluster", cluster=redis_cluster)
    for sidecars in (10, 100):
        r = await run_cell(SHORT, cluster, sidecars, 3, log_dir=tmp_path_factory.mktemp("cluster"))
        _judge(r)
        assert r.redis_cpu_busiest < r.redis_cpu  # (more than one primary worked)


# -- the checker, on logs made by hand -----------------------------------------------------------------

LIMITS = {"p/a": AccountLimits(rpm=120, tpm=1_000_000, concurrency=2, burst_s=1.0)}  # burst: 2 a second


def paced(n: int = 121, every_s: float = 0.5, rtt_s: float = 0.001) -> list[Admission]:
    """``n`` admissions ``every_s`` apart, each released at once: 120 in any 60 s at 0.5 s."""
    return [Admission(i * every_s, i * every_s + rtt_s, "p/a", 100, i * every_s + 0.1) for i in range(n)]


def test_the_checker_passes_a_log_at_the_limits() -> None:
    log = paced()
    assert check(log, LIMITS) == []
    assert max_in_window(log, 60.0, lambda _: 1.0)[0] == 120  # exactly the limit: allowed


def test_the_checker_catches_one_request_too_many() -> None:
    extra = Admission(30.25, 30.26, "p/a", 100, 30.3)
    found = {v.limit for v in check([*paced(), extra], LIMITS)}
    assert found == {"RPM", "burst"}  # 121 in 60 s; 3 in [30.0, 31.0)


def test_the_checker_does_not_blame_the_limiter_for_a_delay_it_cannot_place() -> None:
    """An answer that took 32 s may have been decided at any time in between: not surely in the
    window."""
    late = Admission(29.0, 61.0, "p/a", 100, 61.1)
    assert [v.limit for v in check([*paced(), late], LIMITS)] == []


def test_the_checker_catches_tokens_and_concurrency() -> None:
    limits = {"p/a": replace(LIMITS["p/a"], tpm=1000)}
    tokens = [Admission(0.0, 0.01, "p/a", 600, 0.1), Admission(59.0, 59.01, "p/a", 600, 59.1)]
    assert [v.limit for v in check(tokens, limits)] == ["TPM"]
    # Two leases end exactly when the third begins: never more than two at once.
    touching = [Admission(0.0, 0.01, "p/a", 1, 2.0), Admission(0.5, 0.51, "p/a", 1, 2.0)]
    assert check([*touching, Admission(1.9, 2.0, "p/a", 1, 3.0)], LIMITS) == []
    overlapping = [*touching, Admission(1.0, 1.01, "p/a", 1, 3.0)]
    assert [v.limit for v in check(overlapping, LIMITS)] == ["concurrency"]
    never_released = [Admission(0.0, 0.01, "p/a", 1, None), Admission(10.0, 10.01, "p/a", 1, None)]
    assert [v.limit for v in check([*never_released, Admission(20.0, 20.01, "p/a", 1, 21.0)], LIMITS)] == [
        "concurrency"
    ]
