"""A changed config reaches a running sidecar process without a restart (reload.py): the kubelet
swaps the mounted ConfigMap's files, a sidecar with the new config takes over on the same port, and
an app calling all along sees no failed call; a changed file that is not a valid config is refused
and the sidecar keeps the config it has."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import openai
import yaml
from prometheus_client.parser import text_string_to_metric_families

from o1emulator.embedded import EmulatorHandle
from tests.polling import until
from tests.sidecar.conftest import BIG, KEYS, sidecar_config_dict
from tests.sidecar.volumes import MountedVolume


def config(emulator: EmulatorHandle, key_file: Path, rpm: int) -> str:
    raw = sidecar_config_dict(emulator, limits={"o1": {"rpm": rpm, "tpm": BIG["tpm"]}})
    raw["accounts"][0]["keys"] = [{"name": "a1", "file": str(key_file)}]
    return yaml.safe_dump(raw)


async def sample(session: aiohttp.ClientSession, url: str, name: str, labels: dict[str, str]) -> float | None:
    async with session.get(url) as response:
        text = await response.text()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return None


async def test_a_changed_config_is_taken_up_without_a_restart_or_a_failed_call(
    tmp_path: Path, emulator: EmulatorHandle
) -> None:
    key_file = tmp_path / "a1.key"
    key_file.write_text(KEYS["acct-a"][0])
    volume = MountedVolume(tmp_path / "config")
    volume.write(**{"config.yaml": config(emulator, key_file, rpm=6000)})
    proc = await asyncio.create_subprocess_exec(
        *[sys.executable, "-m", "o1pool.cli", "sidecar", "--config", str(volume.root / "config.yaml")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    calls: dict[str, Any] = {"ok": 0, "failed": []}
    stop = asyncio.Event()
    try:
        assert proc.stdout is not None
        banner = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode().split()
        url, metrics = banner[3], banner[5].rstrip(")")
        client = openai.AsyncOpenAI(base_url=url, api_key="unused")  # the SDK's default retries

        async def app() -> None:
            while not stop.is_set():
                try:
                    await client.chat.completions.create(
                        model="o1", messages=[{"role": "user", "content": f"q{calls['ok']}"}]
                    )
                    calls["ok"] += 1
                except openai.OpenAIError as exc:
                    calls["failed"].append(repr(exc))
                await asyncio.sleep(0.02)

        running = asyncio.create_task(app())
        effective = ("o1_api_effective_limit", {"account": "acct-a", "model": "o1", "type": "requests"})
        async with aiohttp.ClientSession() as session:

            async def limit_is(rpm: float) -> bool:
                return await sample(session, metrics, *effective) == rpm

            await until(lambda: limit_is(6000.0), "serving with the first config", timeout_s=30)
            before = calls["ok"]
            volume.write(**{"config.yaml": config(emulator, key_file, rpm=3000)})
            await until(lambda: limit_is(3000.0), "the new limit in force", timeout_s=60)
            await until(lambda: calls["ok"] > before + 20, "calls through the new sidecar", timeout_s=30)

            volume.write(**{"config.yaml": "accounts: []\n"})  # not a valid config

            async def refused() -> bool:
                return await sample(session, metrics, "o1_api_config_rejections_total", {}) == 1.0

            await until(refused, "the invalid config refused", timeout_s=60)
            assert await limit_is(3000.0)  # the config in force is unchanged
            after = calls["ok"]
            await until(lambda: calls["ok"] > after + 20, "calls after the refusal", timeout_s=30)
        stop.set()
        await running
        assert calls["failed"] == []
    finally:
        stop.set()
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(proc.communicate(), 60)
    log = stderr.decode()
    assert proc.returncode == 0, log
    assert "applied" in log and "not applied" in log and "accounts" in log
    assert KEYS["acct-a"][0] not in log
