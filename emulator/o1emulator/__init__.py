"""OpenAI upstream emulator: rate limits per account and model, OpenAI's shapes, headers and errors,
deterministic answers, latency model and fault injection. See docs/emulator.md."""

from o1emulator.config import EmulatorConfig, EmulatorConfigError, default_config
from o1emulator.embedded import EmulatorHandle, EmulatorThread, start_emulator

__all__ = [
    "EmulatorConfig",
    "EmulatorConfigError",
    "EmulatorHandle",
    "EmulatorThread",
    "default_config",
    "start_emulator",
]
