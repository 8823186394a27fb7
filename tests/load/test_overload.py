"""Four sidecar processes share two accounts through a real Redis under ~3x overload.

The emulator's own counters are the referee: no limit exceeded at the upstream, upstream 429s at
most 0.1% of calls, every client request answered, high priority served before low.
"""

from __future__ import annotations

import pytest

from o1pool.procs import RedisServer
from o1pool.scenarios import OverloadSettings, run_overload

pytestmark = [pytest.mark.redis, pytest.mark.slow]


async def test_four_sidecars_hold_shared_limits_under_3x_overload(redis_server: RedisServer) -> None:
    settings = OverloadSettings(sidecars=4, duration_s=60.0)
    result = await run_overload(settings, redis_server)

    assert len(result.outcomes) == 1800
    statuses = {o.status for o in result.outcomes}
    assert statuses <= {200, 429}, f"unexpected answers: {statuses - {200, 429}}"
    assert result.answered == len(result.outcomes)
    for account, model in ((a, m) for a in result.stats["accounts"].values() for m in a["models"].values()):
        assert not any(model["exceeded"].values()), (account["organization"], model)
        assert model["window_60s"]["max_requests"] <= model["window_60s"]["requests_bound"]
    assert result.upstream_429_rate <= 0.001, result.upstream_429
    assert result.utilisation >= 0.90, f"utilisation {result.utilisation:.1%}"
    # requests turned away by the sidecars waited in the queue first, and said so
    turned_away = [o for o in result.outcomes if o.status == 429]
    assert turned_away, "3x overload with a 15 s deadline must turn some requests away"
    assert result.mean_latency(8) < result.mean_latency(2)
    high = [o for o in result.outcomes if o.planned.priority == 8]
    low = [o for o in result.outcomes if o.planned.priority == 2]
    served_share = {
        name: sum(o.status == 200 for o in g) / len(g) for name, g in (("high", high), ("low", low))
    }
    assert served_share["high"] > served_share["low"], served_share
