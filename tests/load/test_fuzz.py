"""Hostile requests (``o1pool fuzz``, drawn by hypothesis) against a sidecar process with a real Redis
and the emulator behind it: not one 5xx, not one traceback or ERROR line in the sidecar's log.
(``o1pool fuzz`` runs 10,000 and also judges memory.)"""

from __future__ import annotations

import pytest

from o1pool.fuzz import report, run_fuzz
from o1pool.procs import RedisServer

pytestmark = [pytest.mark.redis]


def test_no_hostile_request_gets_a_5xx_or_a_traceback(redis_server: RedisServer) -> None:
    result = run_fuzz(600, redis_server, warmup=50)
    assert result.total == 600
    assert not result.failures, report(result)
    assert result.tracebacks == 0 and result.error_lines == 0, report(result)
    assert result.statuses[400] > 100 and result.statuses[200] > 20, report(result)  # both kinds were drawn
