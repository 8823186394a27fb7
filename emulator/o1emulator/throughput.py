"""Measure the emulator's throughput: ``python -m o1emulator.throughput``.

Starts the emulator in a subprocess pinned to one core (zero latency, limits too high to refuse),
drives it with ``wrk`` pinned to another core, and reports requests per second of wall time and per
CPU-second the emulator process used. The second figure is what one free core sustains even when the
machine is shared.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.request import urlopen

import yaml

KEY = "sk-throughput-key-01"
CONFIG = {
    "models": {"o1": {"reasoning": True, "output_tokens": [16, 48], "reasoning_tokens": [64, 256]}},
    "accounts": [
        {
            "name": "bench",
            "keys": [{"name": "k", "key": KEY}],
            "models": {"o1": {"rpm": 10**9, "tpm": 10**12}},
        }
    ],
}
BODIES = {
    "chat": {
        "model": "o1",
        "messages": [{"role": "user", "content": "Write one sentence about rate limits."}],
        "max_completion_tokens": 1000,
    },
    "stream": {
        "model": "o1",
        "messages": [{"role": "user", "content": "Write one sentence about rate limits."}],
        "max_completion_tokens": 1000,
        "stream": True,
        "stream_options": {"include_usage": True},
    },
}


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def admitted(url: str) -> int:
    with urlopen(url + "/admin/stats", timeout=10) as response:
        return int(json.load(response)["totals"].get("admitted", 0))


def pinned(cpu: int) -> list[str]:
    return ["taskset", "-c", str(cpu)] if shutil.which("taskset") and (os.cpu_count() or 1) > 1 else []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m o1emulator.throughput",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--duration", type=int, default=10, help="seconds per run (default: %(default)s)")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections (default: %(default)s)")
    parser.add_argument(
        "--kind", choices=sorted(BODIES), action="append", help="request kinds (default: all)"
    )
    args = parser.parse_args(argv)
    wrk = shutil.which("wrk")
    if wrk is None:
        print("wrk not found; install it with: apt-get install -y wrk", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="o1emulator-throughput-") as tmp:
        config = Path(tmp) / "config.yaml"
        config.write_text(yaml.safe_dump(CONFIG))
        server = subprocess.Popen(
            [
                *pinned(0),
                sys.executable,
                "-m",
                "o1pool.cli",
                "emulator",
                "--config",
                str(config),
                "--port",
                "0",
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert server.stdout is not None
            url = server.stdout.readline().strip().rsplit(" ", 1)[-1]
            print(f"{'kind':<8} {'req/s (wall)':>13} {'emulator CPU':>13} {'req per CPU-s':>14}")
            for kind in args.kind or sorted(BODIES):
                script = Path(tmp) / f"{kind}.lua"
                script.write_text(
                    'wrk.method = "POST"\n'
                    f"wrk.body = [[{json.dumps(BODIES[kind])}]]\n"
                    'wrk.headers["Content-Type"] = "application/json"\n'
                    f'wrk.headers["Authorization"] = "Bearer {KEY}"\n'
                )
                before_cpu, before_n, started = cpu_seconds(server.pid), admitted(url), time.monotonic()
                subprocess.run(
                    [
                        *pinned(1),
                        wrk,
                        "-t1",
                        f"-c{args.connections}",
                        f"-d{args.duration}s",
                        "-s",
                        str(script),
                        url + "/v1/chat/completions",
                    ],
                    check=True,
                    capture_output=True,
                    text=True,
                )
                wall = time.monotonic() - started
                cpu = cpu_seconds(server.pid) - before_cpu
                count = admitted(url) - before_n
                print(f"{kind:<8} {count / wall:>13.0f} {cpu / wall:>12.0%} {count / cpu:>14.0f}")
        finally:
            server.terminate()
            server.wait(timeout=10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
