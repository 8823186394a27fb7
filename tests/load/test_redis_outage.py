"""Redis stopped for 30 s and restarted under load, with sidecars as separate processes.

While Redis is down each sidecar limits alone on its fair share (limit / live sidecars); nothing is
lost: every request gets an answer, the upstream never sees its limits exceeded, and each sidecar
shares limits again within 5 s of Redis coming back.
"""

from __future__ import annotations

import asyncio
import re
from datetime import datetime

import pytest

from o1pool.loadgen import chat_body, drive, plan_arrivals
from o1pool.procs import RedisServer
from o1pool.scenarios import MODEL, cluster, emulator_config, emulator_stats

pytestmark = [pytest.mark.redis, pytest.mark.slow]


async def test_redis_outage_loses_nothing_and_holds_limits(redis_server: RedisServer) -> None:
    rpm = 120
    emu_cfg = emulator_config(rpm, 10_000_000, latency_scale=0.05)
    plan = plan_arrivals(rate_rps=6.0, duration_s=50.0, priority_mix=((8, 0.3), (5, 0.4), (2, 0.3)))
    with cluster(emu_cfg, 2, {"rpm": rpm, "tpm": 10_000_000}, redis_server) as c:
        load = asyncio.create_task(
            drive(
                c.sidecar_urls,
                plan,
                lambda p: chat_body(p, MODEL, max_tokens=64),
                headers_for=lambda _p: {"x-o1pool-deadline-ms": "20000"},
            )
        )
        await asyncio.sleep(8)
        redis_server.stop()
        await asyncio.sleep(30)
        redis_server.start()
        back = datetime.now()
        outcomes = await load
        stats = await emulator_stats(c.emulator_url)
        logs = c.logs()

    assert len(outcomes) == len(plan)
    assert {o.status for o in outcomes} <= {200, 429}, [o for o in outcomes if o.status not in (200, 429)][:3]
    assert sum(o.status == 200 for o in outcomes) > len(outcomes) // 2
    for account in stats["accounts"].values():
        model = account["models"][MODEL]
        assert not any(model["exceeded"].values()), model
    assert logs.count("limiting locally at 50% of each limit") == 2, logs
    assert logs.count("shared limits again") == 2, logs
    for stamp in re.findall(r"^(\S+ \S+) \w+ \S+: .*shared limits again", logs, re.M):
        shared_again = datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f")
        assert (shared_again - back).total_seconds() < 5.0, (stamp, back)
