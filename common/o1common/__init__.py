"""What the sidecar and the emulator may both import: the provider's published facts and plain utilities.

The emulator is the referee every limit claim is measured against, so it must not borrow the
sidecar's model of the upstream. This package holds only what is *published* (OpenAI's usage-tier
table, its duration format, its BPE encoding files) and utilities with no model in them (reading a
YAML config, waiting for a shutdown signal). How an upstream limits and charges is implemented twice
on purpose: by the sidecar (``o1sidecar.limits``, ``o1sidecar.tokens``) and, independently, by the
emulator (``o1emulator.limits``, ``o1emulator.charge``).
"""
