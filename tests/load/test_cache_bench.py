"""``o1pool bench`` (c) on a small scale: every layer answers from where it should, and a burst of
identical requests over two sidecar processes makes one upstream call per prompt (the emulator's own
counter), against one per request with the cache bypassed. Speed is the benchmark's business."""

from __future__ import annotations

from pathlib import Path

from o1pool.cachebench import LAYERS, CacheSettings, burst_table, layer_table, run_cache_bench
from tests.conftest import RedisServer

SMALL = CacheSettings(
    hit_seconds=1.0,
    concurrency=2,
    semantic_concurrency=1,
    prompts=5,
    rate_rps=20,
    rate_seconds=1.0,
    burst_prompts=3,
    burst_copies=4,
)


async def test_each_layer_answers_and_coalescing_saves_the_copies(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    results = await run_cache_bench(SMALL, redis_server, tmp_path)
    assert [r.layer for r in results.layers] == list(LAYERS)
    for row in results.layers:
        assert row.hits > 0, row.layer  # answered by the layer measured (x-o1pool-cache says which)
        assert len(row.rate_miss_s) == 20, row.layer  # every answer a 200
        if row.layer != "semantic":  # (the semantic layer may be too busy for some: a miss)
            assert len(row.rate_hits_s) == 20, row.layer
    coalesced, bypassed = results.burst
    assert (coalesced.answered, bypassed.answered) == (12, 12)
    assert coalesced.upstream_calls == 3
    assert bypassed.upstream_calls == 12
    assert "75.0%" in burst_table(results.burst)  # 1 - 3/12 of the calls saved
    assert [line.split()[0] for line in layer_table(results.layers, SMALL).splitlines()[2:]] == list(LAYERS)
