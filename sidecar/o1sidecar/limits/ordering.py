"""Queue order: priority first, then age, with aging so that low priority is never starved.

A waiting request's effective priority is ``priority + waited / aging_s``: it rises by one level per
``aging_s`` seconds. Comparing two waiters by effective priority at any moment is the same as
comparing their *rank* ``enqueued_at - priority * aging_s`` (smaller is better), which never changes
while they wait. That is what lets Redis keep the cluster-wide queue as a ZSET scored by rank.
"""

from __future__ import annotations

AHEAD_LIMIT = 64


def rank(priority: int, enqueued_at: float, aging_s: float) -> float:
    """A waiter's fixed position in the queue: smaller is served first."""
    return enqueued_at - priority * aging_s


def blocked_by_queue(
    ahead_tokens: list[int],
    tokens: int,
    free_requests: float,
    free_tokens: float,
    free_slots: float,
) -> bool:
    """Whether better-ranked waiters (costing ``ahead_tokens``) must go first.

    A request may pass the waiters ahead of it only when the free capacity of all the model's
    accounts covers them *and* it. Otherwise it would take what they are waiting for. More than
    ``AHEAD_LIMIT`` ahead always block (the Lua script looks at no more than that many).
    """
    if not ahead_tokens:
        return False
    if len(ahead_tokens) > AHEAD_LIMIT:
        return True
    requests = len(ahead_tokens) + 1
    return free_requests < requests or free_slots < requests or free_tokens < sum(ahead_tokens) + tokens
