"""The pool against upstreams it was not written for, as separate processes: for each limit algorithm,
with and without rate-limit headers, with the real limit as configured and 20% lower (and TPM bound
by an estimate the sidecar does not know), two sidecar processes share two accounts through a real
Redis under 3x overload from the openai SDK. The emulator's counters judge. (``o1pool bench`` runs
the same matrix longer, with four sidecars.)

The bounds here are looser than the benchmark's targets (a shorter run on a shared CI machine), and
still far from what the previous limiter did against the same upstream, which the last test checks:
a bound it would pass proves nothing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from o1pool.matrix import UPSTREAMS, Cell, CellResult, MatrixSettings, run_matrix
from o1pool.procs import RedisServer

pytestmark = [pytest.mark.redis, pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

# 120 RPM per account (2 a second, 16 per 10 s at 80%); a token bucket of 6 s, not a minute, so that
# a bucket 20% smaller than configured is spent within the run. The warm-up covers what the pool
# learns in its first minute of a limit lower than configured.
SETTINGS = MatrixSettings(sidecars=2, rpm=120, warmup_s=90.0, measure_s=60.0, bucket_burst=0.1)
BOUNDS = {True: (0.02, 0.90), False: (0.05, 0.80)}  # known limit: (max 429 rate, min use of real limit)
CELLS = [
    *(
        Cell(u, headers, share)
        for u in sorted(UPSTREAMS)
        for headers in (True, False)
        for share in (1.0, 0.8)
    ),
    *(Cell("sliding log 60s", headers, binding="tokens") for headers in (True, False)),
]
BASELINE = Cell("sliding log 60s", False, 0.8, "minute burst")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def results(redis_server_session: RedisServer) -> AsyncIterator[dict[Cell, CellResult]]:
    """Every cell, eight at a time (about 2.5 minutes a batch)."""
    redis_server_session.flush()
    done = await run_matrix([*CELLS, BASELINE], SETTINGS, redis_server_session, parallel=8, progress=False)
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
    max_429, min_use = BOUNDS[cell.known]
    assert r.lost == 0, describe(r)
    assert r.rate_429 <= max_429, describe(r)
    assert r.utilisation >= min_use, describe(r)
    assert r.served_share(8) >= 0.9 and r.served_share(8) >= r.served_share(2), describe(r)


async def test_the_previous_limiter_fails_those_bounds(results: dict[Cell, CellResult]) -> None:
    """A whole minute's burst and fixed limits (``burst_s: 60``, ``adaptive: false``), as o1pool
    behaved before pacing, against a 60 s sliding log with no headers whose real limit is lower."""
    r = results[BASELINE]
    max_429, min_use = BOUNDS[False]
    assert r.lost == 0, describe(r)
    assert r.rate_429 > 2 * max_429 or r.utilisation < min_use, describe(r)
