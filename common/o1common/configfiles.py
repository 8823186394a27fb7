"""Reading a YAML config file and reporting pydantic validation errors, the same way for every
component: each problem on its own line, naming the source and the field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError


def read_yaml_mapping(path: str | Path, error: type[Exception]) -> dict[str, Any]:
    """The YAML mapping in ``path``; anything else raises ``error`` naming the file and the problem."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise error(f"{path}: cannot read: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise error(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise error(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def format_validation_error(exc: ValidationError, source: str, reference: str) -> str:
    """One line per problem: ``source: field.path: message``; unknown fields point at ``reference``."""
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = f"unknown field; check the spelling against {reference}"
        lines.append(f"{source}: {loc}: {msg}")
    return "\n".join(lines)
