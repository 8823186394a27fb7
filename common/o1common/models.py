"""Published facts about OpenAI models that both the sidecar and the emulator may need."""

from __future__ import annotations

# Context windows in tokens (prompt + completion), as OpenAI's model pages list them.
CONTEXT_WINDOWS: dict[str, int] = {
    "o1": 200_000,
    "o1-mini": 128_000,
    "o1-preview": 128_000,
    "o3-mini": 200_000,
    "gpt-4o": 128_000,
    "gpt-4o-mini": 128_000,
}
