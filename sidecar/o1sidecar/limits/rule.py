"""The admission rule of one account+model, as pure functions of its state, its limits and ``now``.

One documented rule with two implementations: this module (the in-process store, local.py) and the
Lua scripts (lua/admit.lua, lua/release.lua, the Redis store). A property test drives both with the
same random operations and compares every decision and every field of the state.

**Effective limits.** The limits the pool acts on are the configured ones (``C``) times a factor
``f`` in (0, 1] per limit, shared by every sidecar: ``E = max(1, f * C)``. An upstream 429 that the
rule allowed lowers ``f`` (the model of the upstream was wrong); successes under pressure (requests
waiting for the model, or the window nearly full) raise it back: quickly (time constant
``RECOVER_S``) to just below where the upstream last refused, then by ``RAISE_NEAR_PER_MIN`` of the
ceiling per minute near that level, then by ``RAISE_PER_MIN`` past it. The ceiling is 1, or lower
when the upstream's ``x-ratelimit-limit-*`` header says the limit is lower than configured, or its
remaining count says it has counted more than the pool logged (``upstream_ceiling``). Within the
**slow start** (an adaptive account+model's first ``SLOW_START_S`` in the pool, until a limit header or
a 429 ends it) ``E`` is scaled by a share rising from ``SLOW_START_FROM`` to 1 (``slow_start_share``).

**Admission** of a request costing ``c`` tokens needs all of:

- no cooldown, and no probe in flight (see below);
- the daily and monthly request caps not spent (UTC calendar days and months);
- a free concurrency slot;
- **pacing**: the RPM and TPM buckets, refilled continuously at ``E / 60`` per second up to a
  capacity of ``burst_s`` seconds' worth (at least 1), hold 1 request and ``min(c, capacity)``
  tokens; and fewer than the RPM capacity (rounded up) were admitted in the last ``burst_s``
  seconds (a bucket alone lets a late admission's catch-up put a refill on top of its capacity).
  Quota goes out evenly instead of a minute's worth at once, so an upstream that enforces its limit
  over any window of at least ``burst_s`` sees no more than its rate;
- **the window**: the requests and tokens admitted in the last ``WINDOW_S`` (60 s plus the upstream's
  lag) plus this one stay within ``E`` (a request larger than ``E`` tokens may go alone into an empty
  window). Against an upstream that counts per minute — a sliding log, fixed minute windows, a
  token bucket — this alone keeps every call inside its limit.

Admission charges both buckets (levels may go negative: a debt the refill pays back, at most a
minute's worth), logs the request in the window and counts it against the caps. An admission that
fills the ``burst_s`` log leaves the RPM bucket no more than it refills by the time the log frees a
slot: after a burst the pool goes on at the paced rate, not with a burst each time the log frees.

**After a 429** for a request the rule admitted: the bucket of that limit is emptied through the
cooldown (a debt the cooldown repays, so the pool resumes at the paced rate with no burst). A 429
for a request admitted *after* the current episode began opens a new **episode**: the effective
limit is cut (``FIRST_CUT``; twice as deep as the previous cut when refused again within
``IN_A_ROW_REQUESTS`` requests' time of the last cooldown's end; at most ``MAX_CUT``; and to just
under what the window held when, after the pool's first minute on the account, that says the
upstream's limit is lower) unless
the refused request was the probe (which says the rest was too short, not the rate too high —
except within the pool's first minute, where ``PROBES_TO_ESTIMATE`` probes refused in a row say the
upstream still counts everything sent so far, and the limit is cut to just under what the window
holds); the
cooldown is set to ``max(Retry-After, backoff)`` where the backoff doubles per episode in a row
(0.5 s; 1 s for tokens; capped by ``retry.max_retry_after_s``); and the next admission after the
cooldown is a **probe**: the only one in flight until it is answered or ``PROBE_HOLD_S`` passed.
429s of requests admitted before the episode began are echoes of it: they only extend the cooldown
to their own Retry-After. A success of a request admitted after the episode began ends the run of
episodes. A concurrency 429 only rests the account for its Retry-After (at least
``BASE_BACKOFF_S``), and an ``insufficient_quota`` 429 for ``max_cooldown_s``: neither says anything
about a rate.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

from o1sidecar.limits.backend import AccountLimits, Settlement

MINUTE_S = 60.0
UPSTREAM_LAG_S = 0.1  # the most we expect between our admission and the upstream's
WINDOW_S = MINUTE_S + UPSTREAM_LAG_S
PROBE_HOLD_S = 2.0  # a refused probe comes back at once; one still running after this got in
CONCURRENCY_POLL_S = 0.25  # a concurrency wait is ended by a release; this only bounds it
BASE_BACKOFF_S = 0.5
TOKEN_LIMIT_FACTOR = 2.0  # token-limit 429s take longer to clear
FIRST_CUT = 0.01  # the first cut of an effective limit; doubles per cut in a row
MAX_CUT = 0.5
ESTIMATE_MARGIN = 0.98  # an estimate from the window keeps this share of what the window held
ESTIMATE_MIN_SHARE = 0.5  # ...and is trusted only when the window held at least this share of E
ESTIMATE_SPAN_S = 57.0  # ...once the pool has used the account for nearly a minute (before that,
#                         the window says nothing of a minute)
PROBES_TO_ESTIMATE = 2  # refused probes in a row after which a young window estimates the limit
IN_A_ROW_REQUESTS = 10  # refused within this many requests' time of the last cooldown's end: that
#                        cut was not enough
RECOVER_S = 20.0  # below where the upstream last refused, a limit closes the gap with this time constant
RAISE_PER_MIN = 0.05  # (and at least this share of the ceiling per minute), under pressure...
RAISE_NEAR_PER_MIN = 0.001  # ...and only this near where the upstream last refused (each crossing
#                            of the real limit is an episode: a stall that high priorities wait out)
NEAR_LOW, NEAR_HIGH = 0.99, 1.01  # "near": this band around that level
PRESSURE = 0.9  # the window is under pressure when it holds this share of E
MIN_FACTOR = 0.01
CALIBRATE_MIN_SHARE = 0.02  # the upstream's count is compared with our window once it holds this share of E
CALIBRATE_SLACK = 1.1  # the upstream counting up to this much more than our window is lag and rounding
PER_MINUTE_RESET = 0.9  # a count is per minute when it takes this share of a per-minute drain to reset
WALK_LIMIT = 64  # window entries a tokens wait looks at (the same bound in Lua)
DAY_S = 86_400.0
NEVER = -1e18  # "no episode or cut yet" (finite: Redis stores it and Lua reads it back)
SLOW_START_S = 60.0  # an adaptive account's limits start at SLOW_START_FROM of the effective ones at the
SLOW_START_FROM = 0.5  # pool's first admission and rise linearly to all of them over SLOW_START_S
NO_SLOW_START = -1.0  # ``ss`` of a state whose limits are known from elsewhere (a past end)
SLOW_START_LOOKBACK_S = 5.0  # a refusal within it: windows up to 10 s averaged the share this long ago
SLOW_START_GRACE_S = 10.0  # a refusal this early in it says nothing of a rate (only cools down)

# The fields of AccountModel that the Redis hash keeps, under the same names (rule.lua's FIELDS).
LUA_FIELDS = tuple(
    "r t ts bt ss fr ft hr ht ra cd es en cn mr mt pn pl pu wn wt day dc month mc".split()
)  # fmt: skip

Block = Literal["cooldown", "quota", "concurrency", "capacity"]
Outcome = Literal["ok", "rate_limited", "other"]


@dataclass
class AccountModel:
    """What one account+model's limiter knows; the Redis hash ``acct:<account>:<model>`` holds the
    same fields under the same one- and two-letter names, the window and leases in their own keys."""

    r: float  # RPM pacing level, as of ts
    t: float  # TPM pacing level, as of ts
    ts: float
    bt: float = 0.0  # when the pool first admitted a call on this account+model (0: never)
    ss: float = 0.0  # when the slow start ends, or ended (0: never began; see slow_start_share)
    fr: float = 1.0  # effective-limit factors
    ft: float = 1.0
    hr: float = 0.0  # the upstream's own limits from x-ratelimit-limit-* (0: none seen)
    ht: float = 0.0
    ra: float = 0.0  # when the factors were last raised (0: never)
    cd: float = 0.0  # cooling until
    es: float = NEVER  # when the current (or last) 429 episode began
    en: int = 0  # episodes in a row
    cn: int = 0  # cuts in a row
    mr: float = 1.0  # where the upstream last refused, as factors
    mt: float = 1.0
    pn: bool = False  # the next admission is a probe
    pl: str = ""  # the probe's lease while it is held
    pu: float = 0.0  # the probe is held until
    window: deque[tuple[float, str, float]] = field(default_factory=deque)  # (admitted, lease, tokens)
    wn: int = 0
    wt: float = 0.0
    leases: set[str] = field(default_factory=set)
    day: int = -1
    dc: int = 0
    month: int = -1
    mc: int = 0


@dataclass(frozen=True)
class Limits:
    """The numbers one account+model is held to (configured, possibly scaled to a fair share)."""

    rpm: float
    tpm: float
    concurrency: int | None
    burst_s: float = 1.0
    adaptive: bool = True
    daily: int | None = None
    monthly: int | None = None
    max_cooldown_s: float = 300.0

    @classmethod
    def of(cls, a: AccountLimits, scale: float = 1.0) -> Limits:
        """``a``'s limits; ``scale`` < 1 gives a fair share of the rates and concurrency (at least one
        request, token and slot). Request caps are not scaled: a store taking over from Redis starts
        its counts so that only its share of what Redis said was left remains (local.py)."""
        if scale >= 1.0:
            return cls(
                a.rpm, a.tpm, a.concurrency, a.burst_s, a.adaptive, a.daily, a.monthly, a.max_cooldown_s
            )
        slots = None if a.concurrency is None else max(1, math.floor(a.concurrency * scale))
        return cls(
            max(1.0, a.rpm * scale),
            max(1.0, a.tpm * scale),
            slots,
            a.burst_s,
            a.adaptive,
            a.daily,
            a.monthly,
            a.max_cooldown_s,
        )


def new_state(lim: Limits, now: float) -> AccountModel:
    """Full buckets, the configured limits, nothing logged."""
    return AccountModel(r=capacity(lim.rpm, lim.burst_s), t=capacity(lim.tpm, lim.burst_s), ts=now)


# -- derived numbers ----------------------------------------------------------------------------------


def capacity(effective: float, burst_s: float) -> float:
    return max(1.0, effective * burst_s / MINUTE_S)


def effective(st: AccountModel, lim: Limits) -> tuple[float, float]:
    """The effective RPM and TPM (as of ``st.ts``: within the slow start, its share of them)."""
    g = slow_start_share(st.ss, st.ts) if lim.adaptive else 1.0
    return max(1.0, st.fr * g * lim.rpm), max(1.0, st.ft * g * lim.tpm)


def slow_start_share(ends: float, now: float) -> float:
    """The **slow start**: without the upstream's limit headers, the pool does not know whether the
    configured limits are the real ones, and a whole minute at a limit the upstream does not grant has
    it refuse everything for the rest of its minute. So an adaptive account+model starts at
    ``SLOW_START_FROM`` of its effective limits at the pool's first admission on it and rises linearly to
    all of them over ``SLOW_START_S``: the first minute sends 75% of a minute's worth. It ends early at
    the first 429 (the limits stay about where the refusal found them, then cut) or the first limit
    header (the limit is known)."""
    if now >= ends:
        return 1.0
    return 1.0 - (1.0 - SLOW_START_FROM) * (ends - now) / SLOW_START_S


def paced_s(ends: float, since: float, now: float) -> float:
    """``since``..``now`` (``since`` not before the slow start began) weighted by the slow start's share
    of the rate: the bucket refill over it, in seconds of the full rate (exact, so the same however
    often the state is refreshed)."""
    gone = max(0.0, ends - since) ** 2 - max(0.0, ends - now) ** 2
    return (now - since) - (1.0 - SLOW_START_FROM) * gone / (2.0 * SLOW_START_S)


def ceilings(st: AccountModel, lim: Limits) -> tuple[float, float]:
    """How far the factors may rise: 1, or what the upstream's limit headers allow."""
    cr = 1.0 if st.hr <= 0 else min(1.0, st.hr / lim.rpm)
    ct = 1.0 if st.ht <= 0 else min(1.0, st.ht / lim.tpm)
    return cr, ct


def day_index(now: float) -> int:
    return math.floor(now / DAY_S)


def month_index(now: float) -> int:
    """Months since year 0, by the UTC calendar (the provider's billing month)."""
    d = datetime.fromtimestamp(now, UTC)
    return d.year * 12 + d.month - 1


def next_day_s(now: float) -> float:
    return (day_index(now) + 1) * DAY_S - now


def next_month_s(now: float) -> float:
    d = datetime.fromtimestamp(now, UTC)
    year, month = (d.year + 1, 1) if d.month == 12 else (d.year, d.month + 1)
    return datetime(year, month, 1, tzinfo=UTC).timestamp() - now


# -- the steps ----------------------------------------------------------------------------------------


def refresh(st: AccountModel, lim: Limits, now: float) -> None:
    """Bring the state to ``now``: refill the buckets, age the window, expire leases-free probes, roll
    the calendar. (Time never runs backwards: an earlier ``now`` refills nothing.)"""
    if now > st.ts:
        paced = paced_s(st.ss, st.ts, now) if lim.adaptive else now - st.ts
        st.r = st.r + paced * max(1.0, st.fr * lim.rpm) / MINUTE_S
        st.t = st.t + paced * max(1.0, st.ft * lim.tpm) / MINUTE_S
        st.ts = now
    er, et = effective(st, lim)
    st.r, st.t = min(st.r, capacity(er, lim.burst_s)), min(st.t, capacity(et, lim.burst_s))
    while st.window and st.window[0][0] <= now - WINDOW_S:
        _, _, tokens = st.window.popleft()
        st.wn -= 1
        st.wt -= tokens
    if not st.window:
        st.wn, st.wt = 0, 0.0
    day, month = day_index(now), month_index(now)
    if day != st.day:
        st.day, st.dc = day, 0
    if month != st.month:
        st.month, st.mc = month, 0


def _window_wait_requests(st: AccountModel, er: float, now: float) -> float:
    """Seconds until one more request fits the window."""
    excess = math.ceil(st.wn + 1 - er)
    if excess <= 0:
        return 0.0
    return max(0.0, st.window[min(excess, st.wn) - 1][0] + WINDOW_S - now)


def _burst_wait(st: AccountModel, er: float, burst_s: float, now: float) -> float:
    """Seconds until one more request keeps the last ``burst_s`` seconds within the RPM bucket's
    capacity (rounded up): a bucket alone lets a late admission's catch-up add a refill to its
    capacity, up to twice a burst's worth in ``burst_s``."""
    most = math.ceil(capacity(er, burst_s))
    if st.wn < most:
        return 0.0
    return max(0.0, st.window[st.wn - most][0] + burst_s - now)


def _window_wait_tokens(st: AccountModel, et: float, tokens: float, now: float) -> float:
    """Seconds until ``tokens`` more fit the window (or the window is empty, for a request > E)."""
    if st.wn == 0:
        return 0.0
    excess = st.wt + tokens - et if tokens <= et else st.wt
    if excess <= 0:
        return 0.0
    at = now
    for i, (admitted, _, taken) in enumerate(st.window):
        if i >= WALK_LIMIT:
            break
        excess -= taken
        at = admitted
        if excess <= 0:
            break
    return max(0.0, at + WINDOW_S - now)


def check(st: AccountModel, lim: Limits, tokens: float, now: float) -> tuple[Block | None, float]:
    """Whether a request of ``tokens`` may be admitted now (``None``) or what blocks it and for how
    long at least. Call :func:`refresh` first. The longest of the blocks is the one reported."""
    er, et = effective(st, lim)
    waits: list[tuple[float, Block]] = []
    if st.cd > now:
        waits.append((st.cd - now, "cooldown"))
    if st.pl and st.pu > now:
        waits.append((st.pu - now, "cooldown"))
    if lim.daily is not None and st.dc >= lim.daily:
        waits.append((next_day_s(now), "quota"))
    if lim.monthly is not None and st.mc >= lim.monthly:
        waits.append((next_month_s(now), "quota"))
    if lim.concurrency is not None and len(st.leases) >= lim.concurrency:
        waits.append((CONCURRENCY_POLL_S, "concurrency"))
    need_t = min(tokens, capacity(et, lim.burst_s))
    pace = max((1.0 - st.r) * MINUTE_S / er, (need_t - st.t) * MINUTE_S / et, 0.0)
    window = max(
        _window_wait_requests(st, er, now),
        _burst_wait(st, er, lim.burst_s, now),
        _window_wait_tokens(st, et, tokens, now),
    )
    blocked = st.r < 1.0 or st.t < need_t or window > 0
    if blocked:
        waits.append((max(pace, window), "capacity"))
    if not waits:
        return None, 0.0
    wait, reason = max(waits, key=lambda w: w[0])
    return reason, wait


def free(st: AccountModel, lim: Limits, now: float) -> tuple[float, float, float]:
    """Requests, tokens and slots this account could take at once (0 while cooling or probing)."""
    if st.cd > now or (st.pl and st.pu > now):
        return 0.0, 0.0, 0.0
    er, et = effective(st, lim)
    requests = max(0.0, min(st.r, er - st.wn))
    tokens = max(0.0, min(st.t, et - st.wt))
    slots = math.inf if lim.concurrency is None else max(0, lim.concurrency - len(st.leases))
    return requests, tokens, slots


def headroom(st: AccountModel, lim: Limits) -> tuple[float, float]:
    """Shares of the effective RPM and TPM not used over the last minute (for the account choice)."""
    er, et = effective(st, lim)
    return max(0.0, er - st.wn) / er, max(0.0, et - st.wt) / et


def admit(st: AccountModel, lim: Limits, tokens: float, lease: str, now: float) -> None:
    """Charge an admission that :func:`check` allowed."""
    er, et = effective(st, lim)
    st.r = max(-er, st.r - 1.0)
    st.t = max(-et, st.t - tokens)
    st.window.append((now, lease, float(tokens)))
    st.wn += 1
    st.wt += tokens
    full = _burst_wait(st, er, lim.burst_s, now)
    if full > 0:  # the bucket holds no more than refills until the burst log frees a slot: the pool
        st.r = min(st.r, 1.0 - full * er / MINUTE_S)  # goes on at the paced rate, not a burst then
    st.leases.add(lease)
    st.dc += 1
    st.mc += 1
    if st.bt <= 0:
        st.bt = now
        if lim.adaptive and st.ss == 0.0 and st.hr <= 0 and st.ht <= 0:
            st.ss = now + SLOW_START_S
    if st.pn:
        st.pn, st.pl, st.pu = False, lease, now + PROBE_HOLD_S


def settle(st: AccountModel, lim: Limits, s: Settlement, now: float, waiting: int = 0) -> None:
    """Apply what the upstream said about one admitted call; ``waiting``: requests queued for the
    model (demand beyond the limit: pressure). Call :func:`refresh` first."""
    st.leases.discard(s.lease_id)
    probe = s.lease_id == st.pl
    if probe:
        st.pl, st.pu = "", 0.0
    er, et = effective(st, lim)
    if s.limit_requests is not None and s.limit_requests >= 1:
        st.hr = upstream_ceiling(s.limit_requests, s.remaining_requests, s.reset_requests_s, st.wn, er)
    if s.limit_tokens is not None and s.limit_tokens >= 1:
        st.ht = upstream_ceiling(s.limit_tokens, s.remaining_tokens, s.reset_tokens_s, st.wt, et)
    if (st.hr > 0 or st.ht > 0) and st.ss > now:  # the upstream says its limit: no need to find it
        st.ss = now
    cr, ct = ceilings(st, lim)
    st.fr, st.ft = min(st.fr, cr), min(st.ft, ct)
    er, et = effective(st, lim)
    if s.extra_tokens > 0:
        st.t = max(-et, st.t - s.extra_tokens)
        _add_to_entry(st, s.lease_id, s.charged_tokens, s.extra_tokens)
    elapsed = max(0.0, s.elapsed_s)
    if s.remaining_requests is not None:
        st.r = min(
            st.r, max(-er, min(capacity(er, lim.burst_s), s.remaining_requests + elapsed * er / MINUTE_S))
        )
    if s.remaining_tokens is not None:
        st.t = min(
            st.t, max(-et, min(capacity(et, lim.burst_s), s.remaining_tokens + elapsed * et / MINUTE_S))
        )
    admitted_at = now - elapsed
    if s.outcome == "rate_limited":
        _after_429(st, lim, s, admitted_at, probe, now)
    elif s.outcome == "ok":
        if admitted_at >= st.es:
            st.en = 0
        if lim.adaptive:
            _raise(st, lim, now, waiting > 0)


def _add_to_entry(st: AccountModel, lease: str, charged: float, extra: float) -> None:
    """Usage beyond the charge counts in the window as in the bucket: on the call's entry (its lease and
    charge), if it is still there (a call longer than the window pays it from the bucket only). Looked
    for from the newest end: a call settles soon after its admission, so its entry is near the end (a
    scan from the oldest end walked the whole minute on every release)."""
    for i in range(len(st.window) - 1, -1, -1):
        at, entry_lease, tokens = st.window[i]
        if entry_lease == lease and tokens == charged:
            st.window[i] = (at, lease, tokens + extra)
            st.wt += extra
            return


def upstream_ceiling(
    limit: float, remaining: float | None, reset_s: float | None, held: float, e: float
) -> float:
    """The upstream's limit (``x-ratelimit-limit-*``) in our units, given what it says it has counted.

    An upstream whose count is per minute (it takes at least ``PER_MINUTE_RESET`` of the time a
    per-minute limit needs to clear it: a sliding minute, a bucket refilling over a minute; not a
    sub-minute window, whose remaining count is of another unit) and exceeds what our window logged by
    more than ``CALIBRATE_SLACK`` charges more than we count (another estimate of the prompt) or also
    serves other clients of the account. Either way our share of its limit, in our units, is the limit
    times what we logged over what it counted. Our window must hold ``CALIBRATE_MIN_SHARE`` of ``e``
    first (a few calls say little)."""
    if remaining is None or reset_s is None or held < CALIBRATE_MIN_SHARE * e:
        return float(limit)
    used = limit - remaining
    per_minute = reset_s >= PER_MINUTE_RESET * used * MINUTE_S / limit
    if not per_minute or used <= CALIBRATE_SLACK * held:
        return float(limit)
    return limit * held / used


def _kinds(limit_type: str | None) -> tuple[bool, bool]:
    """Which limits a 429 is about: (requests, tokens); unknown means both."""
    return limit_type != "tokens", limit_type != "requests"


def _after_429(
    st: AccountModel, lim: Limits, s: Settlement, admitted_at: float, probe: bool, now: float
) -> None:
    retry = s.retry_after_s if s.retry_after_s is not None and s.retry_after_s > 0 else 0.0
    if s.limit_type == "concurrency":  # too many in flight at the upstream: not a rate to correct
        st.cd = max(st.cd, now + min(lim.max_cooldown_s, max(retry, BASE_BACKOFF_S)))
        return
    if s.limit_type == "quota":  # the account's quota is spent: rest it as long as allowed
        st.cd = max(st.cd, now + lim.max_cooldown_s)
        return
    requests, tokens = _kinds(s.limit_type)
    if admitted_at < st.es:  # an echo of the episode in progress
        st.cd = max(st.cd, now + min(lim.max_cooldown_s, retry))
    else:
        st.en += 1
        st.es = now
        if st.ss - SLOW_START_S <= now < st.ss - SLOW_START_S + SLOW_START_GRACE_S:
            pass  # the pool's first calls bunch up at the upstream (connections being set up)
        elif lim.adaptive and (_end_slow_start(st, now) or not probe):
            _cut(st, lim, requests, tokens, now)
        elif lim.adaptive and st.en > PROBES_TO_ESTIMATE and not _first_minute_over(st, now):
            _cut_to_window(st, lim, requests, tokens)
        factor = TOKEN_LIMIT_FACTOR if s.limit_type == "tokens" else 1.0
        backoff = BASE_BACKOFF_S * factor * 2.0 ** (st.en - 1)
        st.cd = max(st.cd, now + min(lim.max_cooldown_s, max(retry, backoff)))
        st.pn, st.pl, st.pu = True, "", 0.0
    # The refused limit's bucket is empty when the cooldown ends: the pool resumes at the paced rate.
    er, et = effective(st, lim)
    rest = max(0.0, st.cd - now)
    if requests:
        st.r = min(st.r, max(-er, -rest * er / MINUTE_S))
    if tokens:
        st.t = min(st.t, max(-et, -rest * et / MINUTE_S))


def _end_slow_start(st: AccountModel, now: float) -> bool:
    """A 429 within the slow start (``True``; only adaptive accounts have one): the limits stay at the
    share it had reached, as an upstream window of up to 10 s saw it (``SLOW_START_LOOKBACK_S`` ago),
    and the cut starts there. (A 429 in its first ``SLOW_START_GRACE_S`` neither ends nor cuts it.)"""
    if st.ss <= now:
        return False
    g = slow_start_share(st.ss, max(now - SLOW_START_LOOKBACK_S, st.ss - SLOW_START_S))
    st.fr, st.ft, st.ss = max(MIN_FACTOR, st.fr * g), max(MIN_FACTOR, st.ft * g), now
    return True


def _cut(st: AccountModel, lim: Limits, requests: bool, tokens: bool, now: float) -> None:
    er, et = effective(st, lim)
    # In a row: refused again soon after the last cooldown ended, so that cut was not enough.
    st.cn = st.cn + 1 if now - st.cd < IN_A_ROW_REQUESTS * MINUTE_S / er else 1
    factor = max(1.0 - MAX_CUT, 1.0 - FIRST_CUT * 2.0 ** (st.cn - 1))
    full = _first_minute_over(st, now)  # the upstream's last minute: what the window holds
    if requests:
        st.fr, st.mr = _cut_factor(st.fr, factor, st.wn if full else 0.0, er, lim.rpm)
    if tokens:
        st.ft, st.mt = _cut_factor(st.ft, factor, st.wt if full else 0.0, et, lim.tpm)


def _first_minute_over(st: AccountModel, now: float) -> bool:
    """Whether the pool has used the account for (nearly) a minute: only then does the window say what
    an upstream counted over a minute."""
    return st.bt > 0 and now - st.bt >= ESTIMATE_SPAN_S


def _cut_to_window(st: AccountModel, lim: Limits, requests: bool, tokens: bool) -> None:
    """Probes refused in a row within the pool's first minute on the account. A refused probe says the
    rest was too short, not the rate too high; but this early, an upstream that still refuses after
    rests counts everything the pool sent so far (a shorter window, or a bucket, would have let a
    probe through): its limit is about what the window holds, and the limit is cut to just under it."""
    er, et = effective(st, lim)
    if requests and st.wn >= ESTIMATE_MIN_SHARE * er:
        st.fr, st.mr = _cut_factor(st.fr, 1.0, st.wn, er, lim.rpm)
    if tokens and st.wt >= ESTIMATE_MIN_SHARE * et:
        st.ft, st.mt = _cut_factor(st.ft, 1.0, st.wt, et, lim.tpm)


def _cut_factor(f: float, factor: float, held: float, e: float, configured: float) -> tuple[float, float]:
    """The cut factor, and where the upstream refused: at ``f``, or at what a whole minute's window
    held when that was well below the effective limit (then the cut goes to just under it)."""
    new, refused_at = f * factor, f
    if held >= ESTIMATE_MIN_SHARE * e:
        refused_at = min(f, held / configured)
        new = min(new, max(f * (1.0 - MAX_CUT), ESTIMATE_MARGIN * refused_at))
    return max(MIN_FACTOR, new), refused_at


def _raise(st: AccountModel, lim: Limits, now: float, waiting: bool) -> None:
    """Under pressure (requests waiting, or the window nearly full), successes raise the factors."""
    elapsed = max(0.0, now - st.ra) if st.ra > 0 else 0.0
    st.ra = now
    er, et = effective(st, lim)
    cr, ct = ceilings(st, lim)
    if st.fr < cr and (waiting or st.wn >= PRESSURE * er):
        st.fr = _raised(st.fr, st.mr, elapsed, cr)
    if st.ft < ct and (waiting or st.wt >= PRESSURE * et):
        st.ft = _raised(st.ft, st.mt, elapsed, ct)


def _raised(f: float, refused_at: float, elapsed: float, ceiling: float) -> float:
    """``f`` after ``elapsed`` seconds of successes: quickly back to just below where the upstream last
    refused, slowly near it, and steadily again past it (the limit may have come back up)."""
    low, high = NEAR_LOW * refused_at, NEAR_HIGH * refused_at
    if low <= f < high:
        return min(ceiling, f + RAISE_NEAR_PER_MIN * elapsed / MINUTE_S * ceiling)
    new = f + RAISE_PER_MIN * elapsed / MINUTE_S * ceiling
    if f < low:
        new = min(low, max(new, low - (low - f) * math.exp(-elapsed / RECOVER_S)))
    return min(ceiling, new)
