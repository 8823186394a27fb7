"""Choosing an account and tracking health (pure)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from o1sidecar.limits.api import UpstreamReport
from o1sidecar.limits.balancing import Candidate, Health, choose, health_at, score, update_health
from o1sidecar.limits.buckets import Bucket


def cand(name: str, rpm_level: float, tpm_level: float, **kw: object) -> Candidate:
    return Candidate(name, Bucket(100, rpm_level, 0.0), Bucket(10_000, tpm_level, 0.0), **kw)  # type: ignore[arg-type]


def test_accounts_without_headroom_are_skipped() -> None:
    assert choose([cand("a", 0.5, 10_000), cand("b", 1, 100)], 500, 0.0) is None
    picked = choose([cand("a", 0.5, 10_000), cand("b", 1, 100), cand("c", 1, 500)], 500, 0.0)
    assert picked is not None and picked.name == "c"


def test_full_concurrency_and_cooldown_are_skipped() -> None:
    cands = [cand("a", 100, 10_000, free_slots=0), cand("b", 100, 10_000, cooling_until=5.0)]
    assert choose(cands, 1, 0.0) is None
    picked = choose(cands, 1, 6.0)  # b's cooldown is over by then
    assert picked is not None and picked.name == "b"


def test_score_formula_and_weight() -> None:
    c = cand("a", 50, 2_500, health=0.5)
    assert abs(score(c, 0.0) - (0.3 * 0.5 + 0.3 * 0.25 + 0.4 * 0.5)) < 1e-9
    assert abs(score(cand("a", 50, 2_500, health=0.5, weight=2.0), 0.0) - 2 * score(c, 0.0)) < 1e-9


def test_most_headroom_and_health_wins() -> None:
    picked = choose([cand("a", 10, 1_000), cand("b", 90, 9_000), cand("c", 90, 9_000, health=0.2)], 1, 0.0)
    assert picked is not None and picked.name == "b"


def test_ties_go_to_the_first_account() -> None:
    picked = choose([cand("a", 10, 1_000), cand("b", 10, 1_000)], 1, 0.0)
    assert picked is not None and picked.name == "a"


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


@given(
    st.lists(st.tuples(st.floats(0, 100), st.floats(0, 10_000), st.floats(0, 1)), min_size=1, max_size=6),
    st.integers(1, 10_000),
)
def test_choice_fits_and_is_best(specs: list[tuple[float, float, float]], tokens: int) -> None:
    cands = [cand(f"a{i}", r, t, health=h) for i, (r, t, h) in enumerate(specs)]
    picked = choose(cands, tokens, 0.0)
    fitting = [c for c in cands if c.rpm.level >= 1 and c.tpm.level >= tokens]
    if not fitting:
        assert picked is None
    else:
        assert picked in fitting
        assert all(score(picked, 0.0) >= score(c, 0.0) for c in fitting)
