"""What an answer cost: US dollars per million tokens by model (input, cached input, output), and the
cost of one answer from the upstream's ``usage``. Reasoning tokens are part of the output
(``completion_tokens`` / ``output_tokens``) and billed as output, as OpenAI bills them.

The shipped table is OpenAI's list prices as of ``PRICES_AS_OF``; a pool overrides any model's price
(``prices:`` in the sidecar config, ``spec.prices`` in the O1Pool). Pure: no I/O."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

PRICES_AS_OF = "2025-08-07"
_SNAPSHOT = re.compile(r"-\d{4}-\d{2}-\d{2}$")  # o1-2024-12-17 is priced as o1


@dataclass(frozen=True)
class Price:
    """US dollars per million tokens."""

    input: float
    cached_input: float
    output: float


DEFAULT_PRICES: dict[str, Price] = {
    "o1": Price(15.0, 7.5, 60.0),
    "o1-mini": Price(1.1, 0.55, 4.4),
    "o1-pro": Price(150.0, 150.0, 600.0),
    "o3": Price(2.0, 0.5, 8.0),
    "o3-mini": Price(1.1, 0.55, 4.4),
    "o3-pro": Price(20.0, 20.0, 80.0),
    "o4-mini": Price(1.1, 0.275, 4.4),
    "gpt-5": Price(1.25, 0.125, 10.0),
    "gpt-5-mini": Price(0.25, 0.025, 2.0),
    "gpt-5-nano": Price(0.05, 0.005, 0.4),
    "gpt-4.1": Price(2.0, 0.5, 8.0),
    "gpt-4.1-mini": Price(0.4, 0.1, 1.6),
    "gpt-4.1-nano": Price(0.1, 0.025, 0.4),
    "gpt-4o": Price(2.5, 1.25, 10.0),
    "gpt-4o-mini": Price(0.15, 0.075, 0.6),
    "text-embedding-3-small": Price(0.02, 0.02, 0.0),
    "text-embedding-3-large": Price(0.13, 0.13, 0.0),
}


@dataclass(frozen=True)
class TokenUse:
    """One answer's tokens by kind, from its ``usage``; ``cached`` and ``reasoning`` are parts of
    ``input`` and ``output``."""

    input: int = 0
    cached: int = 0
    output: int = 0
    reasoning: int = 0

    @classmethod
    def of(cls, usage: Mapping[str, Any]) -> TokenUse:
        """From a Chat Completions, Responses or Embeddings ``usage``; what is missing or not a
        count is 0."""
        inputs = _count(usage, "prompt_tokens") or _count(usage, "input_tokens")
        outputs = _count(usage, "completion_tokens") or _count(usage, "output_tokens")
        in_details = usage.get("prompt_tokens_details") or usage.get("input_tokens_details")
        out_details = usage.get("completion_tokens_details") or usage.get("output_tokens_details")
        cached = _count(in_details, "cached_tokens") if isinstance(in_details, Mapping) else 0
        reasoning = _count(out_details, "reasoning_tokens") if isinstance(out_details, Mapping) else 0
        return cls(inputs, min(cached, inputs), outputs, min(reasoning, outputs))

    def as_dict(self) -> dict[str, int]:
        return {
            "input": self.input,
            "cached": self.cached,
            "output": self.output,
            "reasoning": self.reasoning,
        }


def _count(source: Mapping[str, Any], name: str) -> int:
    value = source.get(name)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


class PriceTable:
    """The shipped prices with a pool's overrides."""

    def __init__(self, overrides: Mapping[str, Price] | None = None) -> None:
        self._prices = {**DEFAULT_PRICES, **(overrides or {})}

    def price(self, model: str) -> Price | None:
        """The model's price; a dated snapshot (``o1-2024-12-17``) without its own is priced as its
        model. ``None``: not known."""
        found = self._prices.get(model)
        if found is None:
            found = self._prices.get(_SNAPSHOT.sub("", model))
        return found

    def cost_usd(self, model: str, use: TokenUse) -> float | None:
        """What ``use`` cost on ``model``; ``None`` when the model has no price."""
        price = self.price(model)
        if price is None:
            return None
        fresh = use.input - use.cached
        dollars = fresh * price.input + use.cached * price.cached_input + use.output * price.output
        return dollars / 1_000_000
