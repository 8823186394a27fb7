"""What a request costs: the character-based prompt estimate and the TPM charge at admission.

OpenAI estimates prompt tokens from characters (about four per token) before running a request, and
charges TPM at admission by the larger of that estimate and the completion budget (``max``); ``sum``
charges both. ``n`` choices multiply the budget. The sidecar must charge exactly what the upstream
does, so the rule has one implementation, in ``o1sidecar.tokens``, which the emulator serves by.
"""

from __future__ import annotations

from o1sidecar.tokens import BUDGET_FIELDS, admission_charge, requested_max_tokens, upstream_prompt_estimate

prompt_estimate = upstream_prompt_estimate
requested_budget = requested_max_tokens

__all__ = ["BUDGET_FIELDS", "admission_charge", "prompt_estimate", "requested_budget"]
