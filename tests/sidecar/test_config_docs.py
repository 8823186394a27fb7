"""The examples are valid configs, and the reference documents every field of the schema."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import BaseModel

import o1sidecar.config as schema
from o1sidecar.config import SidecarConfig

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("sidecar*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_is_valid(path: Path) -> None:
    config = SidecarConfig.load(path)
    assert config.accounts and all(a.serves() for a in config.accounts)


def _fields(model: type[BaseModel]) -> set[str]:
    """Every field name of ``model`` and of the config models nested in it."""
    names: set[str] = set()
    for name, field in model.model_fields.items():
        names.add(name)
        for inner in re.findall(r"o1sidecar\.config\.(\w+)", str(field.annotation)):
            names |= _fields(getattr(schema, inner))
    return names


def test_reference_covers_every_field() -> None:
    text = (ROOT / "docs" / "sidecar-config.md").read_text()
    missing = sorted(name for name in _fields(SidecarConfig) if f"`{name}`" not in text)
    assert not missing, f"docs/sidecar-config.md does not document: {missing}"
