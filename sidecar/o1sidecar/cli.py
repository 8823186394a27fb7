"""``o1pool sidecar --config FILE``: serve the proxy and its metrics until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Callable
from pathlib import Path

from o1sidecar.config import ConfigError, SidecarConfig

log = logging.getLogger("o1sidecar")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="o1pool sidecar",
        description="Serve an OpenAI-compatible endpoint that shares the pool's accounts and limits. "
        "Point the app's OPENAI_BASE_URL at http://<listen>/v1; any API key works, the sidecar supplies "
        "the real one.",
    )
    parser.add_argument(
        "--config",
        required=True,
        help="sidecar config YAML (see docs/sidecar-config.md); a change of the file is taken up without a "
        "restart",
    )
    parser.add_argument(
        "--check", action="store_true", help="validate the config and read the keys, then exit"
    )
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    parser.add_argument(
        "--loop",
        default="auto",
        choices=["auto", "uvloop", "asyncio"],
        help="event loop: uvloop (less CPU per request: docs/performance.md), asyncio's own, or auto "
        "(uvloop when installed, as it is with o1pool except on Windows; the default)",
    )
    return parser


def loop_factory(choice: str) -> tuple[Callable[[], asyncio.AbstractEventLoop] | None, str]:
    """The event loop ``--loop`` asks for and its name: ``None`` is asyncio's default loop."""
    if choice == "asyncio":
        return None, "asyncio"
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise ConfigError("--loop uvloop: uvloop is not installed (pip install uvloop)") from None
        return None, "asyncio"
    return uvloop.new_event_loop, "uvloop"


async def _serve(path: Path, config: SidecarConfig) -> None:
    from o1sidecar.app import SidecarHandle
    from o1sidecar.reload import serve_reloading

    def banner(handle: SidecarHandle) -> str:
        return f"o1pool sidecar: serving {handle.url} (metrics {handle.metrics_url})"

    await serve_reloading(path, config, banner)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = SidecarConfig.load(args.config)
        if args.check:
            from o1sidecar.upstream import load_routes

            routes = load_routes(config)
            keys = sum(len(r.keys) for r in routes.values())
            print(f"{args.config}: valid; {len(routes)} account(s), {keys} key(s) readable")
            return 0
        factory, name = loop_factory(args.loop)
        log.info("event loop: %s", name)
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(_serve(Path(args.config), config))
    except ConfigError as exc:
        print(f"o1pool sidecar: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"o1pool sidecar: cannot serve: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
