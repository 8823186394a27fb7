"""``o1pool emulator``: serve the OpenAI upstream emulator from a YAML config or the embedded default."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from o1common.signals import serve_until_stopped
from o1emulator.config import EmulatorConfig, EmulatorConfigError, default_config
from o1emulator.embedded import start_emulator

DESCRIPTION = """\
Serve an OpenAI-compatible upstream that enforces per-account, per-model RPM, TPM, concurrency and
request caps like OpenAI does, with OpenAI's headers and error bodies, deterministic answers, a latency
model and fault injection.

Without --config it serves an embedded default: accounts acct-a (keys sk-emu-acct-a-key-1,
sk-emu-acct-a-key-2) and acct-b (key sk-emu-acct-b-key-1) with limits for o1, o1-mini, o1-preview,
o3-mini, gpt-4o, gpt-4o-mini and text-embedding-3-small (see --print-config). The first line on
stdout is the URL it listens on; --port 0 picks a free port.

  o1pool emulator --port 0
  o1pool emulator --config examples/emulator.yaml --latency-scale 1 --penalty

Admin (no key needed): GET /admin/stats, GET /admin/timeline, POST /admin/reset,
GET|POST|DELETE /admin/faults.
See docs/emulator.md for the config file and the stats JSON."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="o1pool emulator", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", "-c", metavar="FILE", help="YAML config (default: the embedded one)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    parser.add_argument(
        "--port", "-p", type=int, default=8000, help="port; 0 picks a free one (default: %(default)s)"
    )
    parser.add_argument(
        "--seed", type=int, help="make ids and timestamps deterministic too (overrides config)"
    )
    parser.add_argument("--burst", type=float, help="bucket capacity as a multiple of the minute limit (> 0)")
    parser.add_argument(
        "--charge", choices=["max", "sum"], help="TPM charge rule at admission (overrides config)"
    )
    parser.add_argument(
        "--estimate",
        choices=["chars", "json_chars", "tiktoken"],
        help="prompt estimate the TPM charge uses (overrides config)",
    )
    parser.add_argument(
        "--algorithm",
        choices=["token_bucket", "sliding_log", "fixed_window"],
        help="how every account enforces its limits (overrides config)",
    )
    parser.add_argument(
        "--window",
        type=float,
        metavar="S",
        help="sliding_log / fixed_window length in seconds; under 60 enforces limit * S / 60",
    )
    parser.add_argument("--no-rate-headers", action="store_true", help="send no x-ratelimit-* headers")
    parser.add_argument(
        "--latency-scale",
        type=float,
        metavar="X",
        help="multiply each model's latency (0 = none, 1 = realistic)",
    )
    parser.add_argument(
        "--penalty", action="store_true", help="consecutive 429s lengthen the wait (max 300 s)"
    )
    parser.add_argument(
        "--count-rejected", action="store_true", help="a refused request still spends one request of RPM"
    )
    parser.add_argument(
        "--print-config", action="store_true", help="print the effective config as YAML and exit"
    )
    return parser


def effective_config(args: argparse.Namespace) -> EmulatorConfig:
    config = EmulatorConfig.load(args.config) if args.config else default_config()
    data: dict[str, Any] = config.model_dump(mode="json", exclude_unset=True)
    if args.seed is not None:
        data["seed"] = args.seed
    if args.burst is not None:
        data["burst"] = args.burst
    if args.charge is not None:
        data["tokens"] = {**data.get("tokens", {}), "charge": args.charge}
    if args.estimate is not None:
        data["tokens"] = {**data.get("tokens", {}), "estimate": args.estimate}
    limiter = dict(data.get("limiter", {}))
    if args.algorithm is not None:
        limiter["algorithm"] = args.algorithm
    if args.window is not None:
        limiter["window_s"] = args.window
    if args.no_rate_headers:
        limiter["headers"] = False
    if limiter:
        data["limiter"] = limiter
    if args.latency_scale is not None:
        data["latency_scale"] = args.latency_scale
    if args.count_rejected:
        data["count_rejected"] = True
    if args.penalty:
        data["penalty"] = {**data.get("penalty", {}), "enabled": True}
    return EmulatorConfig.from_dict(data, "command line")


async def serve(config: EmulatorConfig, host: str, port: int) -> None:
    await serve_until_stopped(
        lambda: start_emulator(config, host=host, port=port),
        lambda h: f"o1pool emulator listening on {h.url}",
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = effective_config(args)
    except EmulatorConfigError as exc:
        print(f"o1pool emulator: bad config:\n{exc}", file=sys.stderr)
        return 2
    if args.print_config:
        import yaml

        print(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False), end="")
        return 0
    try:
        asyncio.run(serve(config, args.host, args.port))
    except OSError as exc:
        print(f"o1pool emulator: cannot listen on {args.host}:{args.port}: {exc.strerror}", file=sys.stderr)
        return 1
    return 0
