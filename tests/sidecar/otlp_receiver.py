"""An OTLP/HTTP traces receiver for the tests, run as its own process:

    python tests/sidecar/otlp_receiver.py SPANS.jsonl

listens on 127.0.0.1 (a free port; the first line on stdout says ``listening <port>``), takes
``POST /v1/traces`` as a collector does (an ``ExportTraceServiceRequest`` in protobuf, gzip or
deflate or plain, decoded by ``opentelemetry-proto``), answers with an ``ExportTraceServiceResponse``,
and appends one JSON line per span to SPANS.jsonl: ids in hex, name, kind, times, attributes, events,
status and the resource's attributes. Runs until SIGTERM.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import signal
import sys
import zlib
from pathlib import Path
from typing import Any

from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

PROTOBUF = "application/x-protobuf"


def value_of(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [value_of(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return attributes_of(value.kvlist_value.values)
    if kind == "bytes_value":
        return value.bytes_value.hex()
    return getattr(value, kind) if kind else None


def attributes_of(pairs: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    pair: KeyValue
    for pair in pairs:
        out[pair.key] = value_of(pair.value)
    return out


def spans_of(request: ExportTraceServiceRequest) -> list[dict[str, Any]]:
    out = []
    for resource_spans in request.resource_spans:
        resource = attributes_of(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                out.append(
                    {
                        "trace_id": span.trace_id.hex(),
                        "span_id": span.span_id.hex(),
                        "parent_span_id": span.parent_span_id.hex(),
                        "name": span.name,
                        "kind": span.kind,  # 1 internal, 2 server, 3 client
                        "start_ns": span.start_time_unix_nano,
                        "end_ns": span.end_time_unix_nano,
                        "attributes": attributes_of(span.attributes),
                        "events": [
                            {
                                "name": e.name,
                                "time_ns": e.time_unix_nano,
                                "attributes": attributes_of(e.attributes),
                            }
                            for e in span.events
                        ],
                        "status": span.status.code,  # 0 unset, 1 ok, 2 error
                        "scope": scope_spans.scope.name,
                        "resource": resource,
                    }
                )
    return out


def make_app(path: Path) -> web.Application:
    async def traces(request: web.Request) -> web.Response:
        if request.content_type != PROTOBUF:
            return web.Response(status=415, text=f"send {PROTOBUF}")
        body = await request.read()
        encoding = request.headers.get("Content-Encoding", "")
        if encoding == "gzip":
            body = gzip.decompress(body)
        elif encoding == "deflate":
            body = zlib.decompress(body)
        export = ExportTraceServiceRequest()
        export.ParseFromString(body)
        with path.open("a") as out:
            for span in spans_of(export):
                out.write(json.dumps(span) + "\n")
        return web.Response(body=ExportTraceServiceResponse().SerializeToString(), content_type=PROTOBUF)

    app = web.Application()
    app.router.add_post("/v1/traces", traces)
    return app


async def serve(path: Path) -> None:
    runner = web.AppRunner(make_app(path), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    print(f"listening {runner.addresses[0][1]}", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await runner.cleanup()


if __name__ == "__main__":
    asyncio.run(serve(Path(sys.argv[1])))
