"""The admission rule of one account+model (rule.py), step by step on a driven clock."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from o1sidecar.limits import rule
from o1sidecar.limits.backend import AccountLimits, Settlement

T0 = datetime(2026, 3, 10, 12, 0, tzinfo=UTC).timestamp()
ACCOUNT = AccountLimits("a", rpm=120, tpm=120_000, concurrency=None)


def limits(**changes: object) -> rule.Limits:
    base = dict(rpm=120.0, tpm=120_000.0, concurrency=None, burst_s=1.0)
    return rule.Limits(**{**base, **changes})  # type: ignore[arg-type]


class Pool:
    """One account+model and a clock, with the steps a store takes. ``new``: the pool has never used the
    account, so its first admission begins the slow start; otherwise the limits are known from
    elsewhere (as when a sidecar takes over from Redis) and admission starts at the whole rate."""

    def __init__(self, lim: rule.Limits, now: float = T0, new: bool = False) -> None:
        self.lim = lim
        self.now = now
        self.state = rule.new_state(lim, now)
        if not new:
            self.state.ss = rule.NO_SLOW_START
        self.n = 0

    def check(self, tokens: float = 100) -> tuple[rule.Block | None, float]:
        rule.refresh(self.state, self.lim, self.now)
        return rule.check(self.state, self.lim, tokens, self.now)

    def admit(self, tokens: float = 100) -> str | None:
        """The lease id if admitted now, else None."""
        block, _ = self.check(tokens)
        if block is not None:
            return None
        self.n += 1
        lease = f"l{self.n}"
        rule.admit(self.state, self.lim, tokens, lease, self.now)
        return lease

    def settle(self, lease: str, admitted_at: float, waiting: int = 0, **report: object) -> None:
        rule.refresh(self.state, self.lim, self.now)
        s = Settlement(ACCOUNT, "m", lease, elapsed_s=self.now - admitted_at, **report)  # type: ignore[arg-type]
        rule.settle(self.state, self.lim, s, self.now, waiting)

    def effective(self) -> tuple[float, float]:
        return rule.effective(self.state, self.lim)

    def wait_out(self, tokens: float = 100) -> None:
        """Move the clock to when a request may be admitted (after the cooldown and its debt)."""
        while True:
            block, wait = self.check(tokens)
            if block is None:
                return
            self.now += max(wait, 1e-6)  # (a float of today's epoch seconds has microseconds)


# -- pacing and the window -------------------------------------------------------------------------


def admitted_greedily(p: Pool, until_s: float, step_s: float = 0.01) -> int:
    """Admissions when every request is tried every ``step_s`` until ``until_s`` after T0."""
    n = 0
    while p.now < T0 + until_s:
        while p.admit():
            n += 1
        p.now += step_s
    return n


def test_a_new_adaptive_account_starts_at_half_its_rate_and_reaches_all_of_it_in_a_minute() -> None:
    new = Pool(limits(rpm=600.0), new=True)  # 10 per second once the slow start is over
    assert admitted_greedily(new, 1.0) == 6  # no second holds more than half its burst (5), rounded up
    assert rule.effective(new.state, new.lim)[0] == pytest.approx(600 * (0.5 + 0.5 / 60), rel=1e-3)
    first_minute = admitted_greedily(new, 60.0)
    assert first_minute == pytest.approx(600 * 0.75, abs=6)  # 5/s rising to 10/s: 75% of the minute
    assert rule.effective(new.state, new.lim) == pytest.approx((600.0, 120_000.0), rel=1e-5)
    assert admitted_greedily(new, 70.0) == pytest.approx(100, abs=1)  # the whole rate since
    fixed = Pool(limits(rpm=600.0, adaptive=False), new=True)  # configured limits stand: no slow start
    assert 590 <= admitted_greedily(fixed, 60.0) <= 610


def test_the_slow_start_refills_the_same_however_often_the_state_is_refreshed() -> None:
    often, once = (Pool(limits(rpm=600.0, burst_s=60.0), new=True) for _ in range(2))
    for p in (often, once):
        assert p.admit()
        p.state.r = -500.0  # a debt, so that the bucket's capacity caps nothing below
    for _ in range(300):
        often.now += 0.1
        often.check()
    once.now += 30.0
    once.check()
    assert often.state.r == pytest.approx(once.state.r)
    assert once.state.r == pytest.approx(-500.0 + 187.5)  # 30 s at 5/s rising by 5/s a minute: 150 + 37.5


def test_a_429_ends_the_slow_start_where_it_was_and_cuts_from_there() -> None:
    p = Pool(limits(rpm=600.0), new=True)
    leases = []
    while p.now < T0 + 36.0:  # a sub-minute upstream allowing 80% of the rate refuses when the ramp
        lease = p.admit()  # passes 80%, 36 s in
        if lease:
            leases.append(lease)
        p.now += 0.01
    assert rule.slow_start_share(p.state.ss, p.now) == pytest.approx(0.8, abs=0.01)
    # what a window of up to 10 s saw: the share 5 s ago
    share = rule.slow_start_share(p.state.ss, p.now - rule.SLOW_START_LOOKBACK_S)
    p.settle(leases[-1], p.now, outcome="rate_limited", limit_type="requests")
    assert p.state.ss == p.now and p.state.mr == pytest.approx(share)  # over, where it was refused
    assert p.state.fr == pytest.approx(share * (1 - rule.FIRST_CUT))
    assert p.state.ft == pytest.approx(share)  # tokens were not refused: they stay, and recover


def test_a_refusal_in_the_first_seconds_of_the_slow_start_only_cools_down() -> None:
    p = Pool(limits(rpm=600.0), new=True)
    lease = p.admit()
    assert lease
    ends = p.state.ss
    p.now += 3.0  # the first calls bunched up at the upstream: it says nothing of a rate
    p.settle(lease, p.now - 3.0, outcome="rate_limited", limit_type="requests")
    assert p.state.ss == ends and p.state.fr == 1.0 and p.state.cd > p.now


def test_turning_adaptive_off_ends_the_slow_start() -> None:
    p = Pool(limits(rpm=600.0), new=True)
    assert p.admit() and rule.effective(p.state, p.lim)[0] == pytest.approx(300.0)
    p.lim = limits(rpm=600.0, adaptive=False)  # a config reload: the configured limits stand
    p.check()
    assert rule.effective(p.state, p.lim)[0] == 600.0
    lease = p.admit()
    p.now += 20.0
    assert lease
    p.settle(lease, p.now - 20.0, outcome="rate_limited", limit_type="requests")
    assert p.state.fr == 1.0  # and a 429 cuts nothing


def test_the_upstreams_limit_header_ends_the_slow_start() -> None:
    p = Pool(limits(rpm=600.0), new=True)
    lease = p.admit()
    assert lease and rule.effective(p.state, p.lim)[0] == pytest.approx(300.0)
    p.now += 0.5
    p.settle(lease, p.now - 0.5, outcome="ok", limit_requests=600)
    p.check()
    assert p.state.ss == p.now and rule.effective(p.state, p.lim)[0] == 600.0  # the limit is known
    later = Pool(limits(rpm=600.0), new=True)  # a pool that has seen the header never starts slowly
    later.state.hr = 600.0
    assert later.admit() and rule.effective(later.state, later.lim)[0] == 600.0


def test_pacing_lets_one_seconds_worth_out_then_the_rate() -> None:
    p = Pool(limits())  # 120 RPM: 2 per second, a burst of 2
    assert p.admit() and p.admit()
    block, wait = p.check()  # no third within the burst's second: the bucket's refill waits for it
    assert block == "capacity" and wait == pytest.approx(1.0)
    p.now += 0.999
    assert p.admit() is None
    p.now += 0.001
    assert p.admit()
    block, wait = p.check()  # then the paced rate, not another burst
    assert block == "capacity" and wait == pytest.approx(0.5)


def test_a_late_admission_catches_up_but_no_second_holds_more_than_a_burst() -> None:
    p = Pool(limits(rpm=300.0))  # 5 per second, a burst of 5
    start = p.now
    for _ in range(5):
        assert p.admit()
    p.now += 1.0
    times = []
    while p.now < start + 10.0:  # every admission as soon as allowed, except that some are 50 ms late
        p.wait_out(tokens=1)
        if len(times) % 7 == 3:
            p.now += 0.05
        assert p.admit(tokens=1)
        times.append(p.now)
    assert max(sum(1 for t in times if s <= t < s + 1.0) for s in times) == 5
    assert len(times) == pytest.approx(45, abs=1)  # late ones cost nothing: the next ones catch up


def test_the_window_holds_a_minute_burst_to_the_limit() -> None:
    p = Pool(limits(rpm=60.0, burst_s=60.0))  # a whole minute's burst allowed
    for _ in range(60):
        assert p.admit()
    p.now += 30.0  # the bucket refilled 30, but 60 were sent in the last minute
    block, wait = p.check()
    assert block == "capacity" and wait == pytest.approx(rule.WINDOW_S - 30.0)
    p.now += wait - 0.001
    assert p.admit() is None
    p.now += 0.001
    assert p.admit()  # the first of the burst aged out (60 s plus the upstream's lag)


def test_tokens_larger_than_the_burst_go_when_the_bucket_is_full_leaving_a_debt() -> None:
    p = Pool(limits())  # TPM burst: 2000 tokens
    assert p.admit(tokens=5_000)
    assert p.state.t == pytest.approx(2_000 - 5_000)
    block, wait = p.check(tokens=5_000)
    assert block == "capacity" and wait == pytest.approx(5_000 / 2_000)  # back to full at 2000/s


def test_a_request_larger_than_the_limit_goes_alone_into_an_empty_window() -> None:
    p = Pool(limits(tpm=1_000.0))
    assert p.admit(tokens=10)
    assert p.check(tokens=1_500)[0] == "capacity"  # waits for the window to empty
    p.now += rule.WINDOW_S
    assert p.admit(tokens=1_500)


def test_remaining_counts_only_lower_the_bucket() -> None:
    p = Pool(limits())
    lease = p.admit()
    assert lease
    p.settle(lease, p.now, outcome="ok", remaining_requests=500)
    assert p.state.r == pytest.approx(1.0)  # ours was lower
    p.settle("x", p.now, outcome="ok", remaining_requests=0)
    assert p.state.r == 0.0


# -- after a 429 ------------------------------------------------------------------------------------


def test_a_429_empties_the_bucket_cools_down_and_sends_one_probe() -> None:
    p = Pool(limits())
    first, second = p.admit(), p.admit()
    assert first and second
    admitted = p.now
    p.now += 0.05
    p.settle(first, admitted, outcome="rate_limited", limit_type="requests", retry_after_s=0.3)
    assert p.state.en == 1 and p.state.es == p.now
    rest = rule.BASE_BACKOFF_S  # the 0.5 s backoff beats the 0.3 s Retry-After
    assert p.state.cd == pytest.approx(p.now + rest)
    assert p.state.r == pytest.approx(-rest * p.effective()[0] / 60)  # empty when the cooldown ends
    assert p.check()[1] == pytest.approx(rest + 60 / p.effective()[0])  # the rest, then one request
    # The second was on its way when the episode began: an echo. No new episode, no further cut.
    p.now += 0.01
    factor = p.state.fr
    p.settle(second, admitted, outcome="rate_limited", limit_type="requests", retry_after_s=2.0)
    assert p.state.en == 1 and p.state.fr == factor
    assert p.state.cd == pytest.approx(p.now + 2.0)  # but its Retry-After extends the cooldown
    p.now = p.state.cd
    assert p.check()[0] == "capacity"  # no burst: the bucket is empty as the cooldown ends
    p.wait_out()
    probe = p.admit()
    assert probe and p.state.pl == probe
    assert p.check()[0] == "cooldown"  # held until the probe is answered...
    p.now += rule.PROBE_HOLD_S
    assert p.check()[0] is None  # ...or has been running long enough to have got in


def test_a_refused_probe_lengthens_the_rest_without_cutting_again() -> None:
    p = Pool(limits())
    lease = p.admit()
    assert lease
    p.settle(lease, p.now, outcome="rate_limited", limit_type="requests")
    assert p.state.fr == pytest.approx(1 - rule.FIRST_CUT)
    p.wait_out()
    probe = p.admit()
    assert probe
    p.settle(probe, p.now, outcome="rate_limited", limit_type="requests")
    assert p.state.en == 2 and p.state.cd == pytest.approx(p.now + 2.0)  # the rest was too short
    assert p.state.fr == pytest.approx(1 - rule.FIRST_CUT)  # not the rate: no second cut
    p.wait_out()
    probe = p.admit()
    assert probe
    p.now += 0.2
    p.settle(probe, p.now - 0.2, outcome="ok")
    assert p.state.en == 0 and p.state.pl == ""  # the probe got through: the run of episodes ends
    assert p.check() == ("capacity", pytest.approx((1 - p.state.r) * 60 / p.effective()[0]))  # paced


def refused_after_a_good_probe(p: Pool, wait_s: float, kind: str = "tokens") -> None:
    """Rest out the cooldown, probe (it gets through), then one more request is refused."""
    p.wait_out(tokens=10)
    probe = p.admit(tokens=10)
    assert probe
    p.settle(probe, p.now, outcome="ok")
    p.now += wait_s
    p.wait_out(tokens=10)
    lease = p.admit(tokens=10)
    assert lease
    p.settle(lease, p.now, outcome="rate_limited", limit_type=kind)


def test_cuts_deepen_while_refusals_follow_each_cooldown_and_start_again_after_a_while() -> None:
    p = Pool(limits())
    lease = p.admit(tokens=10)
    assert lease
    p.settle(lease, p.now, outcome="rate_limited", limit_type="tokens")
    factors = [p.state.ft]
    for _ in range(6):  # refused again 1 s after each cooldown: each cut was not enough
        refused_after_a_good_probe(p, 1.0)
        factors.append(p.state.ft)
    cuts = [1 - b / a for a, b in zip([1.0, *factors], factors, strict=False)]
    assert cuts == pytest.approx([0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.5])
    assert p.state.fr == 1.0  # a token-limit 429 says nothing about RPM
    refused_after_a_good_probe(p, rule.IN_A_ROW_REQUESTS * 60 / 120 + 1.0)  # the cut held a while
    assert p.state.cn == 1 and p.state.ft == pytest.approx(factors[-1] * (1 - rule.FIRST_CUT))


def test_the_raise_slows_near_where_the_upstream_last_refused() -> None:
    fast, slow = rule.RAISE_PER_MIN, rule.RAISE_NEAR_PER_MIN
    assert rule._raised(0.985, 1.0, 60.0, 1.0) == pytest.approx(0.99)  # quick steps stop at the band
    assert rule._raised(0.995, 1.0, 60.0, 1.0) == pytest.approx(0.995 + slow)
    assert rule._raised(0.80, 0.80, 60.0, 1.0) == pytest.approx(0.80 + slow)
    assert rule._raised(0.82, 0.80, 60.0, 1.0) == pytest.approx(0.82 + fast)  # past it: maybe back up
    assert rule._raised(0.5, 1.0, 600.0, 0.8) == pytest.approx(0.8)  # never past the ceiling


def test_a_refusal_below_what_a_whole_minute_held_cuts_to_just_under_it() -> None:
    p = Pool(limits(rpm=600.0))  # 10 per second allowed; the upstream really takes 480 a minute
    leases = []
    while p.now < T0 + 60.0:  # 8 per second for a minute
        lease = p.admit()
        if lease:
            leases.append(lease)
        p.now += 0.125
    assert len(leases) == 480
    p.settle(leases[-1], p.now, outcome="rate_limited")  # no body: both limits
    assert p.effective()[0] == pytest.approx(0.98 * 480)
    assert p.state.mr == pytest.approx(0.8)  # where the upstream refused
    assert p.state.ft == pytest.approx(1 - rule.FIRST_CUT)  # the token window held little: plain cut


def test_a_young_window_says_nothing_about_a_minute() -> None:
    p = Pool(limits(rpm=600.0))
    leases = []
    while p.now < T0 + 35.0:  # a sub-minute upstream refuses 35 s in: 350 is no per-minute limit
        lease = p.admit()
        if lease:
            leases.append(lease)
        p.now += 0.1
    p.settle(leases[-1], p.now, outcome="rate_limited", limit_type="requests")
    assert p.state.fr == pytest.approx(1 - rule.FIRST_CUT) and p.state.mr == 1.0


def refused_in_the_first_minute(p: Pool, until_s: float) -> list[str]:
    """Admit every 0.1 s until ``until_s`` after T0, then have the last admitted refused."""
    leases = []
    while p.now < T0 + until_s:
        lease = p.admit()
        if lease:
            leases.append(lease)
        p.now += 0.1
    p.settle(leases[-1], p.now, outcome="rate_limited", limit_type="requests")
    return leases


def refuse_probes(p: Pool, count: int) -> None:
    for _ in range(count):
        p.wait_out()
        probe = p.admit()
        assert probe
        p.settle(probe, p.now, outcome="rate_limited", limit_type="requests")


def test_probes_refused_in_a_row_within_the_first_minute_cut_to_what_the_window_holds() -> None:
    p = Pool(limits(rpm=600.0))
    leases = refused_in_the_first_minute(p, 40.0)  # a per-minute limit of ~400, or a shorter window's
    assert p.state.fr == pytest.approx(1 - rule.FIRST_CUT)  # the refusal alone cannot tell
    refuse_probes(p, rule.PROBES_TO_ESTIMATE - 1)
    assert p.state.fr == pytest.approx(1 - rule.FIRST_CUT)
    refuse_probes(p, 1)  # still refused after rests: the upstream counts all the pool sent so far
    held = len(leases) + rule.PROBES_TO_ESTIMATE
    assert p.state.wn == held and p.state.mr == pytest.approx(held / 600)
    assert p.effective()[0] == pytest.approx(0.98 * held)


def test_probes_refused_after_the_first_minute_or_soon_let_through_do_not_cut() -> None:
    late = Pool(limits(rpm=600.0))
    refused_in_the_first_minute(late, 58.0)  # the window covers a minute: the refusal's own cut...
    cut = late.state.fr
    refuse_probes(late, rule.PROBES_TO_ESTIMATE)
    assert late.state.fr == cut  # ...is all: the probes say only that the rests were too short
    soon = Pool(limits(rpm=600.0))
    refused_in_the_first_minute(soon, 40.0)
    refuse_probes(soon, rule.PROBES_TO_ESTIMATE - 1)
    soon.wait_out()
    probe = soon.admit()
    assert probe
    soon.settle(probe, soon.now, outcome="ok")  # a shorter window, or a bucket, let it through
    assert soon.state.fr == pytest.approx(1 - rule.FIRST_CUT) and soon.state.en == 0


def test_a_cut_limit_recovers_quickly_to_just_below_the_refusal() -> None:
    low = 0.99 * 0.9
    assert rule._raised(0.6, 0.9, rule.RECOVER_S, 1.0) == pytest.approx(low - (low - 0.6) * math.exp(-1))
    assert rule._raised(0.6, 0.9, 10 * rule.RECOVER_S, 1.0) == pytest.approx(low, abs=1e-4)
    assert rule._raised(0.888, 0.9, 0.1, 1.0) > 0.888 + rule.RAISE_PER_MIN * 0.1 / 60 - 1e-12  # at least


def test_successes_under_pressure_raise_the_limit_back_and_idle_ones_do_not() -> None:
    p = Pool(limits(rpm=60.0))
    lease = p.admit()
    assert lease
    p.settle(lease, p.now, outcome="rate_limited", limit_type="requests")
    assert p.state.fr == pytest.approx(1 - rule.FIRST_CUT)
    p.now += 30.0
    lease = p.admit()
    assert lease
    p.settle(lease, p.now, outcome="ok")
    assert p.state.fr == pytest.approx(1 - rule.FIRST_CUT)  # 2 requests in the window: no pressure, no raise
    while p.state.wn < 0.9 * p.effective()[0]:  # keep the window busy
        p.now += 1.05
        assert p.admit()
    raised_at, before = p.state.ra, p.state.fr
    p.settle("x", p.now, outcome="ok")
    assert p.state.fr == pytest.approx(rule._raised(before, 1.0, p.now - raised_at, 1.0))
    assert before < p.state.fr < before + rule.RAISE_NEAR_PER_MIN  # near where refused: slowly
    for _ in range(60):  # another busy minute
        p.now += 1.05
        assert p.admit()
    before = p.state.fr
    p.settle("y", p.now, outcome="ok")
    assert p.state.fr == pytest.approx(before + rule.RAISE_NEAR_PER_MIN * 63 / 60, abs=1e-4)
    p.now += 120.0
    p.settle("z", p.now, outcome="ok")
    assert p.state.ra == p.now  # an idle stretch is not saved up for a later raise


def test_the_upstreams_limit_header_sets_the_ceiling_directly() -> None:
    p = Pool(limits())
    lease = p.admit()
    assert lease
    p.settle(lease, p.now, outcome="ok", limit_requests=96, limit_tokens=500_000)
    assert p.effective() == (pytest.approx(96.0), 120_000.0)  # lower: adopted; higher: configured
    for _ in range(200):
        p.now += 0.6
        p.settle(p.admit() or "-", p.now, outcome="ok")
    assert p.effective()[0] == pytest.approx(96.0)  # raises stop at the ceiling


def test_usage_beyond_the_charge_counts_in_the_window_as_in_the_bucket() -> None:
    p = Pool(limits(burst_s=60.0))
    lease = p.admit(1_000)
    assert lease and p.state.wt == 1_000
    p.settle(lease, p.now, outcome="ok", extra_tokens=300, charged_tokens=1_000)
    assert p.state.wt == 1_300 and p.state.window[0][2] == 1_300
    p.now += rule.WINDOW_S  # the entry ages out with what was added to it
    p.check()
    assert p.state.wt == 0


def test_an_upstream_counting_twice_what_we_logged_per_minute_halves_the_ceiling() -> None:
    # TPM 120,000 configured and at the upstream, which charges each call twice our 1,000 (another
    # estimate of the prompt). Its headers say so: remaining falls twice as fast as our window fills.
    p = Pool(limits(burst_s=60.0))
    leases = [p.admit(1_000) for _ in range(10)]  # 10,000 logged: over 2% of E, enough to compare
    assert all(leases)
    p.settle(
        leases[0] or "", p.now, outcome="ok",
        limit_tokens=120_000, remaining_tokens=100_000, reset_tokens_s=59.0,  # 20,000 counted
    )  # fmt: skip
    assert p.effective()[1] == pytest.approx(60_000.0)  # our share of its limit, in our units
    assert p.effective()[0] == 120.0  # requests: no headers, no change


def test_an_upstream_count_that_is_not_per_minute_or_close_to_ours_changes_nothing() -> None:
    cases = [
        # a 1 s window says "1 of 120 remain" every second: not a minute's count (reset 1 s)
        dict(limit_requests=120, remaining_requests=1, reset_requests_s=1.0),
        # per minute, but within 10% of what we logged: lag and rounding
        dict(limit_requests=120, remaining_requests=109, reset_requests_s=55.0),
        # no reset header: the count's period is unknown
        dict(limit_requests=120, remaining_requests=60),
    ]
    for headers in cases:
        p = Pool(limits(burst_s=60.0))
        leases = [p.admit() for _ in range(10)]
        p.settle(leases[0] or "", p.now, outcome="ok", **headers)
        assert p.effective()[0] == 120.0, headers
    p = Pool(limits(burst_s=60.0))  # too few calls logged to compare (under 2% of E)
    lease = p.admit()
    p.settle(
        lease or "", p.now, outcome="ok", limit_requests=120, remaining_requests=60, reset_requests_s=60.0
    )
    assert p.effective()[0] == 120.0


def test_the_ceiling_follows_the_upstreams_count_back_up() -> None:
    p = Pool(limits(burst_s=60.0))
    leases = [p.admit() for _ in range(12)]
    p.settle(
        leases[0] or "", p.now, outcome="ok", limit_requests=120, remaining_requests=96, reset_requests_s=60.0
    )
    assert rule.ceilings(p.state, p.lim)[0] == pytest.approx(0.5)  # 24 counted, 12 logged
    p.settle(
        leases[1] or "",
        p.now,
        outcome="ok",
        limit_requests=120,
        remaining_requests=108,
        reset_requests_s=60.0,
    )
    assert rule.ceilings(p.state, p.lim)[0] == 1.0  # the other client stopped: the whole limit again


def test_not_adaptive_keeps_the_configured_limit_but_still_cools_down() -> None:
    p = Pool(limits(adaptive=False))
    lease = p.admit()
    assert lease
    p.settle(lease, p.now, outcome="rate_limited", limit_type="requests")
    assert p.state.fr == 1.0 and p.state.cd > p.now and p.state.r < 0 and p.state.pn


def test_the_backoff_is_capped_by_max_cooldown() -> None:
    p = Pool(limits(max_cooldown_s=3.0))
    for _ in range(5):
        p.wait_out()
        lease = p.admit()
        assert lease
        p.settle(lease, p.now, outcome="rate_limited", limit_type="requests", retry_after_s=600)
    assert p.state.cd == pytest.approx(p.now + 3.0)


def test_concurrency_and_quota_429s_rest_the_account_without_touching_the_rate() -> None:
    p = Pool(limits())
    lease = p.admit()
    assert lease
    p.settle(lease, p.now, outcome="rate_limited", limit_type="concurrency", retry_after_s=0.5)
    assert p.state.cd == pytest.approx(p.now + 1.0) and p.state.en == 0 and p.state.fr == 1.0
    p.settle("x", p.now, outcome="rate_limited", limit_type="quota")
    assert p.state.cd == pytest.approx(p.now + 300.0) and p.state.en == 0 and not p.state.pn


# -- caps and the calendar --------------------------------------------------------------------------


def test_daily_cap_holds_until_utc_midnight() -> None:
    p = Pool(limits(daily=2), now=datetime(2026, 3, 10, 23, 59, 0, tzinfo=UTC).timestamp())
    assert p.admit() and p.admit()
    p.now += 1.0
    assert p.check() == ("quota", pytest.approx(59.0))
    p.now += 59.0
    assert p.admit()


def test_monthly_cap_holds_until_the_first_of_the_next_month() -> None:
    p = Pool(limits(monthly=1), now=datetime(2026, 12, 31, 23, 0, tzinfo=UTC).timestamp())
    assert p.admit()
    assert p.check() == ("quota", pytest.approx(3600.0))
    p.now = datetime(2027, 1, 1, tzinfo=UTC).timestamp()
    assert p.admit()


@given(st.floats(0, 4_102_444_800))  # 1970 .. 2100
def test_calendar_indexes_match_the_utc_calendar(now: float) -> None:
    d = datetime.fromtimestamp(now, UTC)
    assert rule.month_index(now) == d.year * 12 + d.month - 1
    start = datetime.fromtimestamp(now + rule.next_month_s(now), UTC)
    assert (start.day, start.hour, start.minute, start.second) == (1, 0, 0, 0)
    assert rule.month_index(now + rule.next_month_s(now)) == rule.month_index(now) + 1
    assert math.isclose(rule.next_day_s(now) % rule.DAY_S, (86_400 - now % 86_400) % 86_400, abs_tol=1e-6)


def test_fair_share_scales_rates_and_slots_not_caps() -> None:
    share = rule.Limits.of(AccountLimits("a", 100, 10_000, 4, daily=10), 0.25)
    assert (share.rpm, share.tpm, share.concurrency, share.daily) == (25.0, 2_500.0, 1, 10)
    tiny = rule.Limits.of(AccountLimits("a", 2, 10, 1), 0.1)
    assert (tiny.rpm, tiny.tpm, tiny.concurrency) == (1.0, 1.0, 1)
