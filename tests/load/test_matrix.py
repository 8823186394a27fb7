"""The pool against upstreams it was not written for, as separate processes: for each limit algorithm,
with and without rate-limit headers, with the real limit as configured and 20% lower (and TPM bound
by an estimate the sidecar does not know), two sidecar processes share two accounts through a real
Redis under 3x overload from the openai SDK. The emulator's counters judge. (``o1pool bench`` runs
the same matrix longer, with four sidecars.)

The bounds here are looser than the benchmark's targets (a shorter run, more cells at once, on a
shared CI machine), and still far from what the previous limiter did against the same upstream (the
issue's own run: 12-27% of upstream calls refused, 50-66% of the binding limit used).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from o1pool.matrix import UPSTREAMS, Cell, CellResult, MatrixSettings, run_matrix
from o1pool.procs import RedisServer

pytestmark = [
    pytest.mark.redis,
    pytest.mark.slow,
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.timeout(1200),  # the module fixture runs every cell: three batches of 3.5 minutes
]

# 120 RPM per account (16 per 10 s at 80%; 300 for 1 s windows, whole requests a second at 80% too);
# a token bucket of 6 s, not a minute, so that a bucket 20% smaller than configured is spent within
# the run. The warm-up covers the slow start and what the pool then learns of a limit lower than
# configured without headers (the first refusal episodes; docs/limits.md).
SETTINGS = MatrixSettings(sidecars=2, rpm=120, warmup_s=150.0, measure_s=60.0, bucket_burst=0.1)
BOUNDS = {True: (0.02, 0.90), False: (0.05, 0.80)}  # known limit: (max 429 rate, min use of real limit)
# A 1 s window holds 5 requests (4 at 80%): with six cells sharing two cores, the sidecars' timing
# jitter costs a quarter of it (69-78% measured here, 90-96% in `o1pool bench`); refusals stay rare.
ONE_SECOND_BOUNDS = (0.02, 0.60)
# The same jitter lets some high-priority requests miss their second: 83-86% of their fair share
# served in CI runs, against >= 0.9 for every other cell.
ONE_SECOND_HIGH_SHARE = 0.75
FIXED_WINDOW_MIN_USE = 0.40
CELLS = [
    *(
        Cell(u, headers, share, rpm=300 if UPSTREAMS[u][1] < 10 else None)
        for u in sorted(UPSTREAMS)
        for headers in (True, False)
        for share in (1.0, 0.8)
    ),
    *(Cell("sliding log 60s", headers, binding="tokens") for headers in (True, False)),
]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def results(redis_server_session: RedisServer) -> AsyncIterator[dict[Cell, CellResult]]:
    """Every cell, six at a time (four batches of about 3.5 minutes)."""
    redis_server_session.flush()
    done = await run_matrix(CELLS, SETTINGS, redis_server_session, parallel=6, progress=False)
    yield {r.cell: r for r in done}


def describe(r: CellResult) -> str:
    return (
        f"{r.cell.label}: {r.upstream_429s}/{r.upstream_calls} refused ({r.rate_429:.1%}), "
        f"{r.utilisation:.0%} of the real limit used, {r.lost} lost, high served {r.served_share(8):.0%}, "
        f"low served {r.served_share(2):.0%}"
    )


@pytest.mark.parametrize("cell", CELLS, ids=lambda c: c.label)
async def test_limits_hold(results: dict[Cell, CellResult], cell: Cell) -> None:
    r = results[cell]
    one_second = UPSTREAMS[cell.upstream][1] < 10
    max_429, min_use = ONE_SECOND_BOUNDS if one_second else BOUNDS[cell.known]
    if UPSTREAMS[cell.upstream][0] == "fixed_window":
        # 60 s measured against fixed windows: which windows' quota falls inside depends on where the
        # measurement starts (43-77% to over 90% between runs of the same code). Refusals, losses and
        # priority are judged here; use over whole windows in `o1pool bench` (300 s).
        min_use = FIXED_WINDOW_MIN_USE
    assert r.lost == 0, describe(r)
    assert r.rate_429 <= max_429, describe(r)
    assert r.utilisation >= min_use, describe(r)
    # High priority goes first: served as far as the real limit allows it, more than low priority.
    assert r.served_share(8) >= (ONE_SECOND_HIGH_SHARE if one_second else 0.9) * r.fair_share(8), describe(r)
    assert r.served_share(8) >= r.served_share(2), describe(r)
