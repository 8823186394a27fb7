"""``o1pool load``: an app that calls the pool as any app would, with the openai SDK.

It reads ``OPENAI_BASE_URL`` (which the injected sidecar's webhook sets), sends a mixed-priority
open-loop load at a fixed rate, and prints one JSON line per finished request window: what each
priority got. It is the workload of the cluster demo and of the end-to-end tests on a real node.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import signal
import socket
import sys
from collections.abc import Sequence

from o1pool.loadgen import Outcome, chat_body, drive, plan_arrivals, summarize_by_priority

DEFAULT_PRIORITIES = "9:0.2,5:0.5,1:0.3"


def parse_priorities(text: str) -> list[tuple[int, float]]:
    """``"9:0.2,5:0.5"`` -> ``[(9, 0.2), (5, 0.5)]``; raises ValueError naming the bad part."""
    mix = []
    for part in text.split(","):
        level, sep, weight = part.partition(":")
        try:
            if not sep:
                raise ValueError
            pair = (int(level), float(weight))
        except ValueError:
            raise ValueError(f"--priorities: {part!r} is not PRIORITY:WEIGHT (e.g. 9:0.2)") from None
        if not 0 <= pair[0] <= 9 or pair[1] <= 0:
            raise ValueError(f"--priorities: {part!r}: priority 0-9 and a positive weight")
        mix.append(pair)
    return mix


def window_report(window: int, outcomes: Sequence[Outcome], elapsed_s: float) -> str:
    """One JSON line: the window's number, how long it took until its last answer, every call's
    ``[priority, status, queue wait s, latency s, model]`` and, per priority, sent/ok/429/errors and
    queue waits."""
    return json.dumps(
        {
            "window": window,
            "elapsed_s": round(elapsed_s, 3),
            "sent": len(outcomes),
            "outcomes": [
                [o.planned.priority, o.status, round(o.queue_wait_s, 3), round(o.latency_s, 3), o.model]
                for o in outcomes
            ],
            "by_priority": [row.__dict__ for row in summarize_by_priority(outcomes)],
        }
    )


async def run(base_url: str, rate: float, window_s: float, windows: int, model: str, mix: str) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    window = 0
    failed = False
    while not stop.is_set() and (windows == 0 or window < windows):
        plan = plan_arrivals(rate, window_s, parse_priorities(mix), seed=window + os.getpid())
        # Every call's prompt differs (across windows and pods), so the pool's cache answers none.
        sender = f"{socket.gethostname()}/{os.getpid()}/{window}/"
        started = loop.time()
        body = functools.partial(chat_body, model=model, max_tokens=256, sender=sender)
        run_window = asyncio.ensure_future(drive([base_url], plan, body, client="openai"))
        stopped = asyncio.ensure_future(stop.wait())
        await asyncio.wait([run_window, stopped], return_when=asyncio.FIRST_COMPLETED)
        if not run_window.done():
            # SIGTERM: finish this window (its requests are planned already) and report it.
            stopped.cancel()
        outcomes = await run_window
        stopped.cancel()
        failed = failed or any(o.status != 200 for o in outcomes)
        print(window_report(window, outcomes, loop.time() - started), flush=True)
        window += 1
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="o1pool load",
        description="Call OPENAI_BASE_URL with the openai SDK at a fixed rate and mixed priorities; "
        "print one JSON line per window of what each priority got. Exit 1 if any call failed.",
    )
    parser.add_argument(
        "--base-url", default=os.environ.get("OPENAI_BASE_URL"), help="default: $OPENAI_BASE_URL"
    )
    parser.add_argument("--rate", type=float, default=1.0, help="requests per second")
    parser.add_argument("--window-seconds", type=float, default=10.0, help="length of a reported window")
    parser.add_argument("--windows", type=int, default=0, help="windows to run; 0: until SIGTERM")
    parser.add_argument("--model", default="o1-mini")
    parser.add_argument("--priorities", default=DEFAULT_PRIORITIES, help="PRIORITY:WEIGHT,...")
    args = parser.parse_args(argv)
    if not args.base_url:
        parser.error("no --base-url and OPENAI_BASE_URL is not set (is the pod annotated o1pool.io/inject?)")
    try:
        parse_priorities(args.priorities)
    except ValueError as error:
        parser.error(str(error))
    if args.rate <= 0 or args.window_seconds <= 0:
        parser.error("--rate and --window-seconds must be positive")
    return asyncio.run(
        run(args.base_url, args.rate, args.window_seconds, args.windows, args.model, args.priorities)
    )


if __name__ == "__main__":
    sys.exit(main())
