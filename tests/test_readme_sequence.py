"""The README's "Running it" sequence works as written: the emulator, then the sidecar with the
example config and the keys the README gives, then an app using the openai SDK. Only the ports are
changed (to free ones), so the test runs next to anything else."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import openai
import yaml

from o1pool.procs import free_port, spawn_module, stop_all, wait_for_port

ROOT = Path(__file__).resolve().parents[1]


def running_it() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = text.split("## Running it", 1)[1].split("```sh", 1)[1].split("```", 1)[0]
    return [line.split("  #")[0].strip() for line in block.replace("\\\n", " ").splitlines() if line.strip()]


def test_the_readme_sequence_serves_an_app(tmp_path: Path) -> None:
    lines = running_it()
    emulator = next(shlex.split(line) for line in lines if line.startswith("o1pool emulator"))
    sidecar = next(shlex.split(line) for line in lines if " o1pool sidecar " in f" {line} ")
    env = dict(word.split("=", 1) for word in sidecar if re.fullmatch(r"[A-Z0-9_]+=.*", word))
    config_path = ROOT / sidecar[sidecar.index("--config") + 1]
    assert emulator[-2:] == ["--port", "8000"] and "127.0.0.1:8000" in config_path.read_text()

    emu_port, port = free_port(), free_port()
    config = yaml.safe_load(config_path.read_text().replace("127.0.0.1:8000", f"127.0.0.1:{emu_port}"))
    config["listen"] = {"host": "127.0.0.1", "port": port}
    config["metrics"] = {"host": "127.0.0.1", "port": free_port()}
    (tmp_path / "sidecar.yaml").write_text(yaml.safe_dump(config))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        procs.append(
            spawn_module("o1pool.cli", *emulator[1:-2], "--port", str(emu_port), log=tmp_path / "emu.log")
        )
        wait_for_port(emu_port, proc=procs[0])
        procs.append(
            spawn_module(
                "o1pool.cli",
                "sidecar",
                "--config",
                str(tmp_path / "sidecar.yaml"),
                log=tmp_path / "sidecar.log",
                env=env,
            )
        )
        wait_for_port(port, proc=procs[1])
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)
        answer = client.chat.completions.create(model="o1-mini", messages=[{"role": "user", "content": "hi"}])
        assert answer.choices[0].message.content
    finally:
        stop_all(procs)
    assert "sk-emu" not in (tmp_path / "sidecar.log").read_text()
