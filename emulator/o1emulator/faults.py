"""Which injected faults a request meets. Rules fire with a probability drawn from a seeded RNG and
optionally only for the next N matching requests, so tests can be exact.

Outcome faults (``error_5xx``, ``hang``, ``reset``, ``cut_stream``) are exclusive: the first rule that
fires decides. Header faults (``no_headers``, ``lying_headers``) apply on top.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from o1emulator.config import FaultRule

OUTCOME_KINDS = frozenset({"error_5xx", "hang", "reset", "cut_stream"})


@dataclass
class ActiveFault:
    rule: FaultRule
    remaining: int | None  # None: unlimited

    def as_dict(self) -> dict[str, object]:
        return {
            **self.rule.model_dump(exclude_defaults=True),
            "kind": self.rule.kind,
            "remaining": self.remaining,
        }


@dataclass(frozen=True)
class FaultChoice:
    outcome: FaultRule | None = None
    headers: FaultRule | None = None


NO_FAULT = FaultChoice()


class FaultPlan:
    """The active fault rules and the seeded RNG that decides probabilistic ones."""

    def __init__(self, rules: list[FaultRule], seed: int | None) -> None:
        self.rng = random.Random(seed if seed is not None else 0)
        self.active: list[ActiveFault] = []
        self.replace(rules)

    def replace(self, rules: list[FaultRule]) -> None:
        self.active = [ActiveFault(rule, rule.count) for rule in rules]

    def add(self, rules: list[FaultRule]) -> None:
        self.active += [ActiveFault(rule, rule.count) for rule in rules]

    def choose(self, account: str, model: str, stream: bool, admitted: bool = True) -> FaultChoice:
        """Faults for one request that reached an account+model; consumes counts of the rules that fire.
        A request that was not admitted (an error answer) only meets header faults."""
        if not self.active:
            return NO_FAULT
        outcome: FaultRule | None = None
        headers: FaultRule | None = None
        spent = False
        for fault in self.active:
            rule = fault.rule
            if rule.account is not None and rule.account != account:
                continue
            if rule.model is not None and rule.model != model:
                continue
            is_outcome = rule.kind in OUTCOME_KINDS
            if is_outcome and not admitted:
                continue
            if (outcome if is_outcome else headers) is not None:
                continue
            if rule.kind == "cut_stream" and not stream:
                continue
            if rule.probability < 1.0 and self.rng.random() >= rule.probability:
                continue
            if is_outcome:
                outcome = rule
            else:
                headers = rule
            if fault.remaining is not None:
                fault.remaining -= 1
                spent = spent or fault.remaining == 0
        if spent:
            self.active = [f for f in self.active if f.remaining != 0]
        if outcome is None and headers is None:
            return NO_FAULT
        return FaultChoice(outcome, headers)

    def describe(self) -> list[dict[str, object]]:
        return [fault.as_dict() for fault in self.active]
