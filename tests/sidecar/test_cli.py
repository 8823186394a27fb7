"""``o1pool sidecar --config FILE`` as a real process, used by the real ``openai`` SDK."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from pathlib import Path

import openai
import yaml
from o1emulator.embedded import EmulatorHandle

from tests.sidecar.conftest import KEYS, sidecar_config_dict

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
