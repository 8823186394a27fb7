"""A client's own RPM/TPM limits (``clients[].limits``; docs/tenants.md#limits). Pure; the same rule is
in ``lua/caps.lua`` for the shared store (test_lua.py's property test runs both).

A sliding log of the client's admitted calls over the last ``WINDOW_S``, across every model and
sidecar of the pool: a call is admitted only if the client's calls of the last minute, this one
included, number at most ``rpm`` and charge at most ``tpm`` tokens. Tokens are charged as the
accounts' TPM charges them at admission (the upstream's rule, tokens.py), and the call's entry grows
by any usage beyond that charge once it answers, as the account's window does. A request whose client
is at its limit waits outside the model's queue (so it holds no one else up, queueing.py) until its
oldest calls age out, or is refused at once when that is after its deadline.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

WINDOW_S = 60.0
WALK_LIMIT = 256  # the TPM wait looks this far into the window at most (then: a retry, later)


@dataclass(frozen=True)
class Cap:
    rpm: float | None  # calls a minute (None: no limit)
    tpm: float | None  # tokens a minute

    def scaled(self, share: float) -> Cap:
        """This cap as one sidecar's share of it (the local fallback holds ``1 / live sidecars``)."""
        return Cap(
            None if self.rpm is None else self.rpm * share, None if self.tpm is None else self.tpm * share
        )


@dataclass
class Entry:
    at: float
    tokens: int
    lease: str


@dataclass
class Window:
    """One client's calls of the last minute, oldest first, and their tokens."""

    entries: list[Entry] = field(default_factory=list)
    tokens: int = 0


def refresh(w: Window, now: float) -> None:
    """Drop the calls that aged out of the window."""
    gone = 0
    while gone < len(w.entries) and w.entries[gone].at <= now - WINDOW_S:
        w.tokens -= w.entries[gone].tokens
        gone += 1
    del w.entries[:gone]
    if not w.entries:
        w.tokens = 0


def wait(w: Window, cap: Cap, tokens: int, now: float) -> float:
    """Seconds until the client may make a call charging ``tokens`` (0: now). ``w`` is refreshed."""
    out = 0.0
    n = len(w.entries)
    if cap.rpm is not None and cap.rpm > 0 and n + 1 > cap.rpm:
        need = math.ceil(n + 1 - cap.rpm)  # calls that must age out first
        out = max(out, w.entries[need - 1].at + WINDOW_S - now)
    if cap.tpm is not None and cap.tpm > 0 and w.tokens + tokens > cap.tpm:
        excess, at = w.tokens + tokens - cap.tpm, now
        for e in w.entries[:WALK_LIMIT]:
            excess -= e.tokens
            at = e.at
            if excess <= 0:
                break
        out = max(out, at + WINDOW_S - now)
    return out


def admit(w: Window, tokens: int, lease: str, now: float) -> None:
    w.entries.append(Entry(now, tokens, lease))
    w.tokens += tokens


def settle(w: Window, lease: str, extra_tokens: int) -> None:
    """The call ``lease`` used ``extra_tokens`` beyond its charge: its entry (if still in the window)
    counts them."""
    if extra_tokens <= 0:
        return
    for e in w.entries:
        if e.lease == lease:
            e.tokens += extra_tokens
            w.tokens += extra_tokens
            return
