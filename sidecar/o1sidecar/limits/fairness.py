"""Fair share between a pool's clients when a model is saturated (docs/tenants.md#fair-share). Pure; the
same rule is in ``lua/admit.lua`` and ``lua/forget.lua`` for the shared queue (test_lua.py's property
test runs both).

A virtual clock per model. Each client has a *finish* time: where the requests it has been given
places in the queue would bring it, were it served exactly its weighted share of the model's rate.
A client's request that waits or is admitted takes the next place: it starts at the client's finish
(or now, if that is past: an idle client banks no credit) and moves the finish on by what one
request is worth at the client's share, ``active weight / (weight * rate)`` seconds (the rate: the
model's accounts' effective RPM per second; the active weight: the weights of the clients whose
finish is less than ``ACTIVE_S`` behind now, its own included). Its rank is that start, less its
priority's ``aging_s`` bands (ordering.py). So each backlogged client's requests are spaced by their
worth, and serving the best rank first serves the clients in proportion to their weights; a client
asking less than its share is served in full, and what one leaves idle goes to the others.

A request that leaves the queue unserved (its deadline passed, its client went away, its sidecar
died) gives its place back: the finish moves back by its worth. So a client that floods holds at
most its live waiters' places, and is served its share again as soon as it asks for no more.
Requests of no client take no place and rank by their arrival, as before clients existed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

ACTIVE_S = 10.0  # a client whose finish is at most this far behind now shares the model's rate
MAX_LEAD_S = 3600.0  # a finish never runs further ahead (rounding; no request waits that long)


@dataclass(frozen=True)
class Share:
    finish: float  # epoch seconds (the store's clock)
    weight: float


@dataclass(frozen=True)
class Place:
    """The place a request of ``client`` takes: where it starts, and what it is worth."""

    client: str
    start: float
    worth: float


def place(shares: Mapping[str, Share], client: str, weight: float, rate_per_s: float, now: float) -> Place:
    """The next place of ``client``'s requests at ``now`` (not yet taken)."""
    active = weight + sum(
        s.weight for name, s in shares.items() if name != client and s.finish > now - ACTIVE_S
    )
    mine = shares.get(client)
    start = now if mine is None else min(max(mine.finish, now), now + MAX_LEAD_S)
    return Place(client, start, active / (weight * max(rate_per_s, 1e-9)))


def taken(p: Place, weight: float) -> Share:
    """The client's share once its request takes place ``p``."""
    return Share(p.start + p.worth, weight)


def given_back(share: Share, worth: float) -> Share:
    """The client's share once a request worth ``worth`` leaves the queue unserved."""
    return Share(share.finish - worth, share.weight)
