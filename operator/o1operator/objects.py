"""What every object the operator makes for a pool carries: the API's names, labels, an owner reference
to the pool (so it goes with the pool) and the config hash it was rendered for."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

GROUP = "o1pool.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "O1Pool"
PLURAL = "o1pools"

HASH_ANNOTATION = f"{GROUP}/config-hash"
POOL_LABEL = f"{GROUP}/pool"
MANAGED_BY = "o1pool-operator"


def owner_reference(pool: Mapping[str, Any]) -> dict[str, Any]:
    meta = pool["metadata"]
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
    }


def object_metadata(
    pool: Mapping[str, Any], name: str, component: str, config_hash: str | None = None
) -> dict[str, Any]:
    """Metadata of an object made for ``pool``: its labels, owner, and (if given) the config hash."""
    meta = pool["metadata"]
    labels = {
        "app.kubernetes.io/name": "o1pool",
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/managed-by": MANAGED_BY,
        POOL_LABEL: meta["name"],
    }
    annotations = {"annotations": {HASH_ANNOTATION: config_hash}} if config_hash is not None else {}
    return {
        "name": name,
        "namespace": meta.get("namespace", "default"),
        "labels": labels,
        **annotations,
        "ownerReferences": [owner_reference(pool)],
    }
