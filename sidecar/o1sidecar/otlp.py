"""Exporting a sidecar's spans over OTLP/HTTP (protobuf): its own ``TracerProvider`` (never the
process-wide one, so several sidecars and a config reload each have theirs), sampling by trace id
after the parent's decision, a ``BatchSpanProcessor`` whose thread does every export (a request only
appends its ended spans to a bounded queue: a slow or unreachable collector costs dropped spans,
never a request's time), and a flush bounded by ``FLUSH_S`` when the sidecar closes.

An unreachable collector is logged once (a warning, then an info line when exports work again); the
OpenTelemetry exporter's own per-batch messages show only at debug level. Imported only when
``tracing.otlp_endpoint`` is set (tracing.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
from collections.abc import Sequence
from urllib.parse import urlsplit

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

from o1sidecar.config import PoolRef, TracingConfig

log = logging.getLogger("o1sidecar.tracing")

FLUSH_S = 3.0  # on close, the spans still queued get this long to reach the collector
TRACES_PATH = "/v1/traces"
# The OpenTelemetry loggers that speak per batch: the exporter (and its HTTP client) and the batch
# processor ("queue full, dropping"). Their messages show only when o1sidecar.tracing logs debug.
CHATTY_LOGGERS = (
    "opentelemetry.exporter.otlp.proto.http.trace_exporter",
    "opentelemetry.sdk._shared_internal",
)


def traces_url(endpoint: str) -> str:
    """The collector's traces URL: ``endpoint`` as it is, or with ``/v1/traces`` when it has no path."""
    return endpoint.rstrip("/") + TRACES_PATH if urlsplit(endpoint).path in ("", "/") else endpoint


class _DebugOnly(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return log.isEnabledFor(logging.DEBUG)


_DEBUG_ONLY = _DebugOnly()


class _LoggedOnce(SpanExporter):
    """The OTLP exporter, saying once that the collector cannot be reached (and again once it can)."""

    def __init__(self, inner: SpanExporter, url: str) -> None:
        self.inner = inner
        self.url = url
        self.failing = False
        self.failed_batches = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            result = self.inner.export(spans)
        except Exception:  # (the processor would log each one with its traceback)
            log.debug("exporting %d span(s) to %s raised", len(spans), self.url, exc_info=True)
            result = SpanExportResult.FAILURE
        if result is SpanExportResult.FAILURE:
            self.failed_batches += 1
            if not self.failing:
                log.warning(
                    "traces: cannot export to %s; spans are dropped until it takes them (said once; "
                    "each failure is logged at debug level)",
                    self.url,
                )
            self.failing = True
        elif self.failing:
            log.info("traces: exporting to %s again", self.url)
            self.failing = False
        return result

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)


class Exporting:
    """A sidecar's tracer provider and its exporter to ``config.otlp_endpoint``."""

    def __init__(self, config: TracingConfig, pool: PoolRef) -> None:
        assert config.otlp_endpoint is not None
        for name in CHATTY_LOGGERS:
            chatty = logging.getLogger(name)
            if _DEBUG_ONLY not in chatty.filters:
                chatty.addFilter(_DEBUG_ONLY)
        url = traces_url(config.otlp_endpoint)
        self.exporter = _LoggedOnce(OTLPSpanExporter(endpoint=url), url)
        resource = Resource.create(
            {
                "service.name": "o1pool-sidecar",
                "service.instance.id": socket.gethostname(),  # the pod's name
                "o1pool.pool": f"{pool.namespace}/{pool.name}",
            }
        )
        self.provider = TracerProvider(
            sampler=ParentBased(TraceIdRatioBased(config.sample_ratio)),
            resource=resource,
            shutdown_on_exit=False,  # (an atexit hook would keep every provider of a reloading process)
        )
        self.provider.add_span_processor(BatchSpanProcessor(self.exporter))

    async def close(self) -> None:
        """Export what is queued, within ``FLUSH_S``; then stop. The flush runs in a daemon thread, so
        a collector that does not answer delays neither the event loop nor the process's exit."""
        loop = asyncio.get_running_loop()
        flushed = loop.create_future()

        def done() -> None:
            if not flushed.done():
                flushed.set_result(None)

        def flush() -> None:
            try:
                self.provider.shutdown()
            finally:
                with contextlib.suppress(RuntimeError):  # (the loop closed meanwhile: nobody waits)
                    loop.call_soon_threadsafe(done)

        threading.Thread(target=flush, name="o1pool-traces-flush", daemon=True).start()
        try:
            await asyncio.wait_for(asyncio.shield(flushed), FLUSH_S)
        except TimeoutError:
            log.warning("traces: %s did not take the last spans within %gs", self.exporter.url, FLUSH_S)
            self.exporter.shutdown()  # (ends the exporter's retries; what is left is dropped)
