"""OpenAI usage-tier presets: the per-model limits an account of a given tier starts with.

RPM, monthly caps and concurrency follow the product brief (reference design, June 2025). The brief
gives no TPM figures; the TPM numbers below are conservative values in the proportions OpenAI
published for the same tiers. Every number can be overridden per account and model.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TierLimits:
    """Limits one account has for one model. ``None`` means the provider sets no such limit."""

    rpm: int
    tpm: int
    concurrency: int | None = None
    monthly_requests: int | None = None
    daily_requests: int | None = None


def _tier(
    models: dict[str, tuple[int, int]], monthly: int | None, concurrency: int | None
) -> dict[str, TierLimits]:
    return {
        model: TierLimits(rpm=rpm, tpm=tpm, concurrency=concurrency, monthly_requests=monthly)
        for model, (rpm, tpm) in models.items()
    }


# model -> (RPM, TPM)
TIER_PRESETS: dict[int, dict[str, TierLimits]] = {
    1: {},
    2: _tier({"o1-preview": (10, 40_000), "o1-mini": (20, 80_000)}, monthly=10_000, concurrency=None),
    3: _tier({"o1-preview": (25, 100_000), "o1-mini": (50, 200_000)}, monthly=50_000, concurrency=None),
    4: _tier(
        {"o1-preview": (50, 400_000), "o1-mini": (100, 800_000), "o1": (20, 400_000)},
        monthly=500_000,
        concurrency=10,
    ),
    5: _tier(
        {"o1-preview": (100, 2_000_000), "o1-mini": (250, 5_000_000), "o1": (50, 2_000_000)},
        monthly=None,
        concurrency=25,
    ),
}


def tier_limits(tier: int, model: str) -> TierLimits | None:
    """The preset for ``model`` at ``tier``, or ``None`` when the tier has no access to it."""
    return TIER_PRESETS.get(tier, {}).get(model)
