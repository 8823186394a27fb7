"""The short fingerprint that tells two values of one key apart, without saying anything about either.

A pool's refused keys are shared through Redis under their ``account/key`` label, with this
fingerprint of the value that was refused: the sidecar that holds another value of that key (after a
rotation) does not treat it as refused, and the operator drops the entries of values no longer in the
pool's Secret. 32 bits of a SHA-256: one string in four billion matches any given fingerprint, so it
cannot confirm a guess of a key, and a rotation changes it with all but that probability.
"""

from __future__ import annotations

import hashlib


def key_fingerprint(label: str, value: str) -> str:
    """8 hex digits for the key ``label`` (``account/key``) holding ``value``."""
    return hashlib.sha256(f"{label}\0{value}".encode()).hexdigest()[:8]
