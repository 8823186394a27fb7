"""Chaos under load, with every part a real process: Redis paused, a sidecar killed, the upstream
restarted. Each case is judged by the clients' outcomes and the emulator's own counters: nothing
lost that the sidecar still serves, no upstream limit exceeded, service back when the fault ends."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Sequence

import pytest
import redis

from o1pool.loadgen import Outcome, chat_body, drive, plan_arrivals
from o1pool.procs import RedisServer, spawn_module, wait_for_port
from o1pool.scenarios import MODEL, Cluster, cluster, emulator_config, emulator_stats

pytestmark = [pytest.mark.redis, pytest.mark.slow]
RPM = 120
MIX = ((8, 0.3), (5, 0.4), (2, 0.3))
HEADERS = {"x-o1pool-deadline-ms": "15000"}


def load(
    urls: Sequence[str], rate_rps: float, duration_s: float, seed: int = 1
) -> asyncio.Task[list[Outcome]]:
    plan = plan_arrivals(rate_rps=rate_rps, duration_s=duration_s, priority_mix=MIX, seed=seed)
    return asyncio.create_task(
        drive(urls, plan, lambda p: chat_body(p, MODEL, max_tokens=64), headers_for=lambda _p: HEADERS)
    )


def admitted(stats: dict) -> int:
    return sum(a["models"][MODEL]["admitted"] for a in stats["accounts"].values())


def assert_within_limits(stats: dict) -> None:
    for account in stats["accounts"].values():
        model = account["models"][MODEL]
        assert not any(model["exceeded"].values()), model
        assert model["rejected_total"] == 0, model  # no upstream 429: the pool never went over


def assert_answered(outcomes: list[Outcome]) -> None:
    """Every request got an answer: served, or a 429 with a retry-after (the queue's deadline)."""
    odd = [o for o in outcomes if o.status not in (200, 429)]
    assert not odd, odd[:3]


async def test_redis_paused_under_load_loses_nothing(redis_server: RedisServer) -> None:
    """``CLIENT PAUSE`` stalls every Redis call (unlike a stopped Redis, connections stay open): the
    sidecars time out, limit locally on their share, and share again when Redis answers."""
    emu_cfg = emulator_config(RPM, 10_000_000, latency_scale=0.05)
    with cluster(emu_cfg, 2, {"rpm": RPM, "tpm": 10_000_000}, redis_server) as c:
        running = load(c.sidecar_urls, 6.0, 24.0)
        await asyncio.sleep(6)
        client = redis.Redis.from_url(redis_server.url)
        client.execute_command("CLIENT", "PAUSE", "6000", "ALL")
        client.close()
        outcomes = await running
        stats = await emulator_stats(c.emulator_url)
        logs = c.logs()
    assert_answered(outcomes)
    assert sum(o.status == 200 for o in outcomes) > len(outcomes) // 3
    assert_within_limits(stats)
    assert logs.count("limiting locally at 50% of each limit") >= 1, logs
    assert logs.count("shared limits again") >= 1, logs


async def test_a_sidecar_killed_under_load_leaves_the_other_the_whole_limit(
    redis_server: RedisServer,
) -> None:
    """SIGKILL (no drain) of one of two sidecars: its leases and queue tickets die with it; the survivor
    answers all of its own requests and, once the dead one's heartbeat is stale, uses the whole
    limit: the dead sidecar's tickets, ranked ahead, do not block its queue."""
    emu_cfg = emulator_config(RPM, 10_000_000, latency_scale=0.05)
    with cluster(emu_cfg, 2, {"rpm": RPM, "tpm": 10_000_000}, redis_server) as c:
        survivor, victim = c.sidecar_urls
        judged = load([survivor], 4.0, 36.0)
        doomed = load([victim], 4.0, 8.0, seed=2)
        await asyncio.sleep(8)
        c.procs[2].send_signal(signal.SIGKILL)  # procs: emulator, sidecar 0, sidecar 1
        await doomed
        await asyncio.sleep(12)  # the victim's heartbeat and tickets go stale
        before = admitted(await emulator_stats(c.emulator_url))
        outcomes = await judged
        after = admitted(await emulator_stats(c.emulator_url))
        stats = await emulator_stats(c.emulator_url)
        assert c.procs[1].poll() is None, c.logs()
    assert_answered(outcomes)
    assert_within_limits(stats)
    rate = (after - before) / 16.0  # the load's last 16 s
    assert rate >= 0.8 * RPM / 60, f"the survivor used {rate:.2f} rps of {RPM / 60:.0f} rps"


async def test_the_upstream_restarted_under_load(redis_server: RedisServer) -> None:
    """The upstream process is killed and started again 4 s later: the sidecar answers every request
    (an upstream error after its retries, or 503 while the model is known down; never a dropped
    connection or a 500), probes it, and serves everything again once the ramp back (as long as the
    outage, a few seconds here) has run."""
    emu_cfg = emulator_config(RPM * 10, 10_000_000, latency_scale=0.05)
    extra = {"fallback": {"outage_probe_s": 1.0}}
    with cluster(emu_cfg, 1, {"rpm": RPM * 10, "tpm": 10_000_000}, redis_server, sidecar_extra=extra) as c:
        running = load(c.sidecar_urls, 5.0, 30.0)
        await asyncio.sleep(6)
        restart(c, down_s=4.0)
        await asyncio.sleep(4)
        outcomes = await running
        stats = await emulator_stats(c.emulator_url)
        assert c.procs[1].poll() is None, c.logs()
    statuses = {o.status for o in outcomes}
    assert statuses <= {200, 429, 502, 503, 504}, [o for o in outcomes if o.status not in statuses][:3]
    last = [o for o in outcomes if o.planned.at_s >= 24.0]
    assert last and all(o.status == 200 for o in last), [o.status for o in last]
    assert admitted(stats) >= len(last)


def restart(c: Cluster, down_s: float) -> None:
    """Kill the emulator and start it again on the same port after ``down_s`` (a background thread)."""
    import threading
    import time

    port = int(c.emulator_url.rsplit(":", 1)[1])
    c.procs[0].send_signal(signal.SIGKILL)
    c.procs[0].wait()

    def again() -> None:
        time.sleep(down_s)
        proc = spawn_module(
            "o1pool.cli",
            "emulator",
            "--config",
            str(c.workdir / "emulator.yaml"),
            "--port",
            str(port),
            log=c.workdir / "emulator-restarted.log",
        )
        c.procs[0] = proc
        wait_for_port(port, proc=proc)

    threading.Thread(target=again, daemon=True).start()
