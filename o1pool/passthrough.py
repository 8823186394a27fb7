"""A bare aiohttp pass-through proxy: the benchmark's baseline for what any proxy costs.

It forwards each request to the upstream with one shared connection pool and returns the answer,
with no limits, queue, cache or metrics. ``python -m o1pool.passthrough --upstream URL --port P``.
"""

from __future__ import annotations

import argparse

import aiohttp
from aiohttp import web

HOP_HEADERS = {"host", "content-length", "transfer-encoding", "connection"}
RESPONSE_DROP = HOP_HEADERS | {"content-encoding"}


def create_app(upstream: str, api_key: str) -> web.Application:
    app = web.Application()
    session_key = web.AppKey("session", aiohttp.ClientSession)

    async def on_startup(app: web.Application) -> None:
        app[session_key] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))

    async def on_cleanup(app: web.Application) -> None:
        await app[session_key].close()

    async def forward(request: web.Request) -> web.Response:
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_HEADERS}
        headers["Authorization"] = f"Bearer {api_key}"
        url = upstream.rstrip("/") + "/" + request.match_info["tail"]
        async with app[session_key].request(request.method, url, data=body, headers=headers) as resp:
            data = await resp.read()
            out = {k: v for k, v in resp.headers.items() if k.lower() not in RESPONSE_DROP}
            return web.Response(status=resp.status, body=data, headers=out)

    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    app.router.add_route("*", "/v1/{tail:.*}", forward)
    return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Bare aiohttp pass-through proxy (benchmark baseline).")
    parser.add_argument("--upstream", required=True, help="upstream base URL ending in /v1")
    parser.add_argument("--api-key", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument(
        "--loop", default="asyncio", choices=["asyncio", "uvloop"], help="event loop (default: asyncio's own)"
    )
    args = parser.parse_args(argv)
    loop = None
    if args.loop == "uvloop":
        import uvloop

        loop = uvloop.new_event_loop()
    web.run_app(
        create_app(args.upstream, args.api_key),
        host="127.0.0.1",
        port=args.port,
        print=None,
        access_log=None,
        loop=loop,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
