"""Token-bucket arithmetic for per-minute limits, as pure functions of the bucket and the time.

A bucket holds up to ``capacity`` units (the per-minute limit) and refills continuously at
``capacity / 60`` per second. Admission charges several buckets (RPM and TPM) together: both or
neither. Reconciliation may push a level below zero (a debt the refill pays back), never below
``-capacity``.

The upstream keeps the same buckets but sees each request a little later than we admit it. While
buckets are below capacity that lag only helps (the upstream has refilled a bit more), but a full
bucket gains nothing while it waits: if our full bucket starts refilling at admission and the
upstream's only when the request arrives, ours runs ahead by ``rate * lag``. So a charge that takes
a bucket off capacity also takes the ``rate * UPSTREAM_LAG_S`` the upstream will not have refilled.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

REFILL_WINDOW_S = 60.0
UPSTREAM_LAG_S = 0.1  # the most we expect between our admission and the upstream's


@dataclass(frozen=True)
class Bucket:
    capacity: float
    level: float
    updated: float  # the time ``level`` was computed at

    @property
    def rate(self) -> float:
        """Units refilled per second."""
        return self.capacity / REFILL_WINDOW_S

    @classmethod
    def full(cls, capacity: float, now: float) -> Bucket:
        return cls(capacity=capacity, level=capacity, updated=now)

    @classmethod
    def empty(cls, capacity: float, now: float) -> Bucket:
        return cls(capacity=capacity, level=0.0, updated=now)


def refill(bucket: Bucket, now: float) -> Bucket:
    """The bucket as it stands at ``now``; time never runs backwards (a late clock changes nothing)."""
    elapsed = now - bucket.updated
    if elapsed <= 0:
        return bucket
    level = min(bucket.capacity, bucket.level + elapsed * bucket.rate)
    return replace(bucket, level=level, updated=now)


def resize(bucket: Bucket, capacity: float, now: float) -> Bucket:
    """The bucket under a new limit (config change, fair share): the level keeps its fill ratio."""
    bucket = refill(bucket, now)
    if capacity == bucket.capacity:
        return bucket
    ratio = bucket.level / bucket.capacity if bucket.capacity > 0 else 0.0
    return Bucket(capacity=capacity, level=ratio * capacity, updated=bucket.updated)


def try_charge(
    charges: Sequence[tuple[Bucket, float]], now: float, lag_s: float = 0.0
) -> tuple[Bucket, ...] | None:
    """Charge every bucket its amount if all of them can pay; otherwise charge none (``None``).

    A bucket that was full also gives up ``rate * lag_s`` (see the module docstring).
    """
    refilled = [(refill(b, now), amount) for b, amount in charges]
    if any(b.level < amount for b, amount in refilled):
        return None
    return tuple(
        replace(b, level=b.level - amount - (b.rate * lag_s if b.level >= b.capacity else 0.0))
        for b, amount in refilled
    )


def charge(bucket: Bucket, amount: float, now: float) -> Bucket:
    """Charge unconditionally (usage beyond the admission estimate); the debt is capped at one minute."""
    bucket = refill(bucket, now)
    return replace(bucket, level=max(-bucket.capacity, bucket.level - amount))


def lower_to(bucket: Bucket, level: float, now: float) -> Bucket:
    """Adopt ``level`` if it is lower than what the bucket holds (the upstream knows better)."""
    bucket = refill(bucket, now)
    if level >= bucket.level:
        return bucket
    return replace(bucket, level=max(-bucket.capacity, level))


def seconds_until(bucket: Bucket, amount: float, now: float) -> float:
    """How long until the bucket holds ``amount``: 0 if it does, ``inf`` if it never can."""
    if amount > bucket.capacity:
        return math.inf
    bucket = refill(bucket, now)
    missing = amount - bucket.level
    if missing <= 0:
        return 0.0
    return missing / bucket.rate


def used_ratio(bucket: Bucket, now: float) -> float:
    """Share of the per-minute limit spent over the last minute, as the bucket sees it (0..1+)."""
    bucket = refill(bucket, now)
    if bucket.capacity <= 0:
        return 0.0
    return (bucket.capacity - bucket.level) / bucket.capacity
