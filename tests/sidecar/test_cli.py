"""``o1pool sidecar --config FILE`` as a real process, used by the real ``openai`` SDK."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import openai
import yaml

from o1emulator.embedded import EmulatorHandle
from tests.polling import until
from tests.sidecar.conftest import KEYS, EmulatorFactory, sidecar_config_dict

SECRET = KEYS["acct-a"][0]


def write_config(tmp_path: Path, emulator: EmulatorHandle) -> Path:
    config = sidecar_config_dict(emulator)
    key_file = tmp_path / "a1.key"
    key_file.write_text(SECRET + "\n")
    config["accounts"][0]["keys"] = [{"name": "a1", "file": str(key_file)}]
    path = tmp_path / "sidecar.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


async def test_sidecar_subprocess_serves_the_sdk(tmp_path: Path, emulator: EmulatorHandle) -> None:
    path = write_config(tmp_path, emulator)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "o1pool.cli",
        "sidecar",
        "--config",
        str(path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        assert line.startswith("o1pool sidecar: serving http://127.0.0.1:"), line
        url = line.split()[3]

        def use() -> tuple[str, list[str]]:
            client = openai.OpenAI(base_url=url, api_key="not-a-real-key", max_retries=0)
            completion = client.chat.completions.create(
                model="o1", messages=[{"role": "user", "content": "hi"}]
            )
            return completion.choices[0].message.content or "", [m.id for m in client.models.list()]

        text, models = await asyncio.to_thread(use)
        assert text and "o1" in models
        assert emulator.stats()["accounts"]["acct-a"]["keys"]["a1"]["admitted"] == 1
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    assert SECRET not in (out + err).decode()
    assert "sidecar ready" in err.decode()


def test_check_validates_and_reads_keys(tmp_path: Path, emulator: EmulatorHandle) -> None:
    path = write_config(tmp_path, emulator)
    done = subprocess.run(
        [sys.executable, "-m", "o1pool.cli", "sidecar", "--config", str(path), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "valid; 1 account(s), 1 key(s) readable" in done.stdout


def test_bad_config_exits_2_naming_the_field(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("accounts:\n  - name: a\n    keys: [{name: k, env: X}]\n    tier: 9\n")
    done = subprocess.run(
        [sys.executable, "-m", "o1pool.cli", "sidecar", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "accounts.0.tier" in done.stderr and str(path) in done.stderr


async def test_sigterm_finishes_calls_in_flight_and_hands_back_the_queue(
    tmp_path: Path, make_emulator: EmulatorFactory
) -> None:
    """Two calls in flight (concurrency 2, each 2 s upstream) and three waiting: on SIGTERM the two
    finish with 200, the three get 429 with a retry-after after ``shutdown.queue_s``, and the process
    exits 0 within ``shutdown.grace_s``."""
    upstream = await make_emulator(latency_scale=1.0, models={"o1": {"latency": {"ttft_ms": 2000}}})
    config = sidecar_config_dict(
        upstream, limits={"o1": {"rpm": 10_000, "tpm": 10_000_000, "concurrency": 2}}
    )
    config["accounts"][0]["keys"] = [{"name": "a1", "file": str(tmp_path / "a1.key")}]
    config["shutdown"] = {"grace_s": 8.0, "queue_s": 0.5}
    config["cache"] = {"enabled": False}
    (tmp_path / "a1.key").write_text(SECRET)
    (tmp_path / "sidecar.yaml").write_text(yaml.safe_dump(config))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "o1pool.cli", "sidecar", "--config", str(tmp_path / "sidecar.yaml"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    words = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode().split()
    url, metrics_url = words[3], words[5].rstrip(")")
    client = openai.AsyncOpenAI(base_url=url, api_key="x", max_retries=0)

    async def ask(i: int) -> tuple[int, str]:
        try:
            await client.chat.completions.create(
                model="o1",
                messages=[{"role": "user", "content": f"request {i}"}],
                extra_headers={"x-o1pool-deadline-ms": "60000"},
            )
            return 200, ""
        except openai.APIStatusError as exc:
            return exc.status_code, f"{exc.response.headers.get('retry-after')} {exc.message}"

    calls = [asyncio.create_task(ask(i)) for i in range(5)]

    async def waiting() -> float:
        async with aiohttp.ClientSession() as session, session.get(metrics_url) as r:
            lines = (await r.text()).splitlines()
        return sum(float(x.split()[-1]) for x in lines if x.startswith("o1_api_queue_length{"))

    await until(lambda: waiting_is(waiting, 3), "two calls in flight and three waiting", 20)
    proc.send_signal(signal.SIGTERM)
    results = await asyncio.gather(*calls)
    _, err = await asyncio.wait_for(proc.communicate(), 8.0 + 5)
    assert proc.returncode == 0, err.decode()[-2000:]
    assert sorted(status for status, _ in results) == [200, 200, 429, 429, 429], results
    for status, said in results:
        if status == 429:
            assert said.startswith("1 ") and "shutting down" in said, said
    assert upstream.stats()["totals"]["admitted"] == 2  # nothing sent after SIGTERM


async def waiting_is(waiting: Callable[[], Awaitable[float]], count: int) -> bool:
    return await waiting() == count
