"""Helpers for the operator tests: golden files and fake Secret data for the examples."""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).parent / "golden"
EXAMPLES = sorted(REPO.glob("examples/o1pool-*.yaml"))
UPDATE_GOLDEN = os.environ.get("O1POOL_UPDATE_GOLDEN") == "1"


def assert_golden(name: str, text: str) -> None:
    """Compare ``text`` with ``golden/name``; with O1POOL_UPDATE_GOLDEN=1 (``make golden``) rewrite it."""
    path = GOLDEN / name
    if UPDATE_GOLDEN:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return
    if not path.exists():
        pytest.fail(f"golden file {path} missing; create it with: make golden")
    assert text == path.read_text(), f"{path} differs; if the change is intended, run: make golden"


def b64(value: str) -> str:
    return base64.b64encode(value.encode()).decode()


def fake_key(secret: str, key: str) -> str:
    """A recognisable fake API key, so tests can assert it never leaks."""
    return f"sk-fake-{secret}-{key}-5ecret"


FAKE_REDIS_PASSWORD = "fake-redis-pa55word"


def fake_secrets(spec: Mapping[str, Any]) -> dict[str, dict[str, str]]:
    """Data (base64) for every Secret the spec references: fake keys, and a Redis URL with a password."""
    data: dict[str, dict[str, str]] = {}
    for account in spec["accounts"]:
        for key in account["keys"]:
            ref = key["secretKeyRef"]
            data.setdefault(ref["name"], {})[ref["key"]] = b64(fake_key(ref["name"], ref["key"]))
    redis = spec.get("redis") or {}
    if "urlSecretRef" in redis:
        ref = redis["urlSecretRef"]
        url = f"redis://:{FAKE_REDIS_PASSWORD}@redis.example:6379/0"
        data.setdefault(ref["name"], {})[ref["key"]] = b64(url)
    if "passwordSecretRef" in redis:
        ref = redis["passwordSecretRef"]
        data.setdefault(ref["name"], {})[ref["key"]] = b64(FAKE_REDIS_PASSWORD)
    for client in spec.get("clients") or []:
        for key in client.get("virtualKeys") or []:
            ref = key["secretRef"]
            data.setdefault(ref["name"], {})[ref["key"]] = b64(
                fake_virtual_key_digest(ref["name"], ref["key"])
            )
    tls = (spec.get("gateway") or {}).get("tlsSecretName")
    if tls:
        data[tls] = {
            "tls.crt": b64(fake_pem(tls, "CERTIFICATE")),
            "tls.key": b64(fake_pem(tls, "PRIVATE KEY")),
        }
    return data


def fake_virtual_key(secret: str, key: str) -> str:
    return f"sk-o1p-fake-{secret}-{key}-5ecret"


def fake_virtual_key_digest(secret: str, key: str) -> str:
    """What ``o1pool virtual-key`` would have the Secret hold for :func:`fake_virtual_key`."""
    return "sha256:" + hashlib.sha256(fake_virtual_key(secret, key).encode()).hexdigest()


def fake_pem(secret: str, kind: str) -> str:
    return f"-----BEGIN {kind}-----\nfake-{secret}-5ecret\n-----END {kind}-----\n"


def secret_values(secrets: Mapping[str, Mapping[str, str]]) -> list[str]:
    """Every secret value in plain text and base64, plus the Redis password, to search for leaks."""
    values = [FAKE_REDIS_PASSWORD, b64(FAKE_REDIS_PASSWORD)]
    for data in secrets.values():
        for encoded in data.values():
            values += [encoded, base64.b64decode(encoded).decode()]
    return values


def load_example(path: Path, namespace: str = "default") -> dict[str, Any]:
    pool = yaml.safe_load(path.read_text())
    pool["metadata"] |= {
        "namespace": namespace,
        "uid": "00000000-0000-4000-8000-000000000001",
        "generation": 1,
    }
    return pool
