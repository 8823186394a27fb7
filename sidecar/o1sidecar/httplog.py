"""Malformed HTTP from a client is the client's fault, not the sidecar's: aiohttp logs each one at
ERROR with a traceback, which anyone who can reach the port could use to flood the log. This filter
turns those records into one WARNING line without a traceback, at most one per ``interval_s``, and
says how many it left out."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from aiohttp.http_exceptions import HttpProcessingError

SERVER_LOGGER = "aiohttp.server"


class MalformedHttpFilter(logging.Filter):
    def __init__(self, interval_s: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.interval_s = interval_s
        self._clock = clock
        self._next_at = 0.0
        self.suppressed = 0

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, HttpProcessingError):
            return True
        now = self._clock()
        if now < self._next_at:
            self.suppressed += 1
            return False
        self._next_at = now + self.interval_s
        left_out = f" ({self.suppressed} more since the last one not logged)" if self.suppressed else ""
        self.suppressed = 0
        reason = str(exc.message or type(exc).__name__).strip().splitlines()[0]
        record.msg = f"malformed HTTP request refused with {exc.code}: %s{left_out}"
        record.args = (reason,)
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        record.exc_info, record.exc_text = None, None
        return True


def quiet_malformed_http() -> None:
    """Install the filter on aiohttp's server logger once per process."""
    logger = logging.getLogger(SERVER_LOGGER)
    if not any(isinstance(f, MalformedHttpFilter) for f in logger.filters):
        logger.addFilter(MalformedHttpFilter())
