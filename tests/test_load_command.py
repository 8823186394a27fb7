"""``o1pool load``, the app of the cluster demo and the end-to-end tests, against a real sidecar."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

import pytest

from o1pool.demo import DemoSettings, emulator_config, sidecar_config
from o1pool.load import parse_priorities


def test_priorities_parse_and_bad_ones_name_the_part() -> None:
    assert parse_priorities("9:0.2,5:0.5") == [(9, 0.2), (5, 0.5)]
    for bad in ("9", "x:1", "12:1", "5:0"):
        with pytest.raises(ValueError, match="--priorities"):
            parse_priorities(bad)


def test_without_a_base_url_it_says_the_pod_may_lack_injection() -> None:
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_BASE_URL"}
    result = subprocess.run(
        [sys.executable, "-m", "o1pool.cli", "load", "--windows", "1"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert result.returncode == 2 and "o1pool.io/inject" in result.stderr


async def test_each_window_reports_every_request_it_sent_through_a_sidecar() -> None:
    """The command as a process (openai SDK inside) against an in-process emulator and sidecar."""
    from o1emulator import start_emulator
    from o1sidecar.app import start_sidecar
    from o1sidecar.config import SidecarConfig

    settings = DemoSettings(latency_scale=0.01)
    emulator = await start_emulator(emulator_config(settings))
    os.environ["O1POOL_DEMO_KEY_A"] = emulator.key("acct-a")
    os.environ["O1POOL_DEMO_KEY_B"] = emulator.key("acct-b")
    sidecar = await start_sidecar(SidecarConfig.from_dict(sidecar_config(settings, emulator.base_url, None)))
    try:
        process = await asyncio.create_subprocess_exec(
            *[sys.executable, "-m", "o1pool.cli", "load", "--rate", "4", "--window-seconds", "1"],
            *["--windows", "2", "--priorities", "9:1,1:1"],
            env={**os.environ, "OPENAI_BASE_URL": sidecar.url},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    finally:
        await sidecar.close()
        await emulator.close()
    assert process.returncode == 0, stderr.decode()
    windows = [json.loads(line) for line in stdout.decode().splitlines()]
    assert [w["window"] for w in windows] == [0, 1]
    for window in windows:
        assert window["sent"] == 4 and len(window["outcomes"]) == 4
        assert {status for _, status, *_ in window["outcomes"]} == {200}
        assert sum(row["sent"] for row in window["by_priority"]) == 4
        # The window lasts until its last answer: at least the planned second of arrivals.
        assert window["elapsed_s"] >= 0.75
    assert emulator.stats()["totals"]["admitted"] == 8
