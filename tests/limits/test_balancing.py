"""Choosing an account (score) and tracking health (pure); which accounts the rule admits at all is
tested in test_rule.py and, against the Lua, in test_lua.py."""

from __future__ import annotations

from o1sidecar.limits.api import UpstreamReport
from o1sidecar.limits.balancing import Health, health_at, score, update_health


def test_score_formula_and_weight() -> None:
    assert abs(score(0.5, 0.25, 0.5, 1.0) - (0.3 * 0.5 + 0.3 * 0.25 + 0.4 * 0.5)) < 1e-9
    assert abs(score(0.5, 0.25, 0.5, 2.0) - 2 * score(0.5, 0.25, 0.5, 1.0)) < 1e-9


def test_more_headroom_or_health_scores_higher() -> None:
    assert score(0.9, 0.9, 1.0, 1.0) > score(0.1, 0.9, 1.0, 1.0)
    assert score(0.9, 0.9, 1.0, 1.0) > score(0.9, 0.9, 0.2, 1.0)


def test_errors_lower_health_and_successes_restore_it() -> None:
    h = Health(1.0, 0.0)
    h = update_health(h, UpstreamReport(status=503), 0.0)
    assert h.value == 0.5
    h = update_health(h, UpstreamReport(status=0, failed=True), 0.0)
    assert h.value == 0.25
    after_429 = update_health(h, UpstreamReport(status=429), 0.0)
    assert after_429.value < h.value
    ok = update_health(h, UpstreamReport(status=200), 0.0)
    assert ok.value > h.value
    assert update_health(h, UpstreamReport(status=400), 0.0).value == h.value  # a client error says nothing


def test_health_recovers_with_rest() -> None:
    h = Health(0.0, 0.0)
    assert health_at(h, 60.0) == 0.5
    assert health_at(h, 600.0) > 0.99
