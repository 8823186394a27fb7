"""Queue order with aging, and when a request may pass the waiters ahead of it (pure)."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from o1sidecar.limits.ordering import blocked_by_queue, rank

AGING = 30.0


def effective_priority(priority: int, enqueued_at: float, now: float, aging_s: float) -> float:
    """What ``rank`` promises to order by: priority raised by one level per ``aging_s`` seconds waited."""
    return priority + max(0.0, now - enqueued_at) / aging_s


def served_before(a: tuple[int, float], b: tuple[int, float], aging_s: float) -> bool:
    """Whether waiter ``a`` = (priority, enqueued_at) ranks before ``b``; ties go to the older."""
    ra, rb = rank(a[0], a[1], aging_s), rank(b[0], b[1], aging_s)
    return ra < rb if ra != rb else a[1] <= b[1]


def test_priority_first_then_age() -> None:
    assert served_before((9, 100.0), (5, 90.0), AGING)  # higher priority first
    assert served_before((5, 90.0), (5, 100.0), AGING)  # same priority: older first


def test_low_priority_ages_past_fresh_high_priority() -> None:
    # Priority 0 enqueued at t=0 ranks as priority 9 arriving at t=270: after 9 levels of aging.
    assert served_before((9, 269.0), (0, 0.0), AGING)
    assert served_before((0, 0.0), (9, 271.0), AGING)
    assert served_before((9, 1e6), (0, 0.0), 1e9)  # with (almost) no aging it would starve
    assert effective_priority(0, 0.0, 270.0, AGING) == 9


@given(
    st.lists(st.tuples(st.integers(0, 9), st.floats(0, 1e4)), min_size=2, max_size=30),
    st.floats(0, 1e4),
    st.floats(1, 600),
)
def test_rank_order_is_effective_priority_order_at_any_moment(
    waiters: list[tuple[int, float]], later: float, aging: float
) -> None:
    now = max(t for _, t in waiters) + later
    by_rank = sorted(waiters, key=lambda w: rank(w[0], w[1], aging))
    prios = [effective_priority(p, t, now, aging) for p, t in by_rank]
    assert all(a >= b - 1e-6 for a, b in itertools.pairwise(prios))


def test_blocked_by_queue() -> None:
    assert not blocked_by_queue([], 100, 0, 0, 0)  # nobody ahead: the store decides alone
    assert blocked_by_queue([100], 100, free_requests=1, free_tokens=1000, free_slots=5)
    assert not blocked_by_queue([100], 100, free_requests=2, free_tokens=200, free_slots=2)
    assert blocked_by_queue([100], 100, free_requests=2, free_tokens=199, free_slots=2)
    assert blocked_by_queue([100], 100, free_requests=2, free_tokens=1000, free_slots=1)
