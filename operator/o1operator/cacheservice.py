"""A pool's cache service (L3, and L4 with ``spec.cache.semantic``): what ``spec.cache.persistent``
renders into. Pure builders.

One Deployment + Service per pool, not one shared by a namespace's pools: an answer must never cross
pools (their accounts, models and policies differ, and the pools may belong to different teams), a
pool chooses its own volume and size, and a pool's service goes away with the pool (owner
reference). It is one replica with the ``Recreate`` strategy: the SQLite file has one writer. A
NetworkPolicy lets only the pool's own pods (the webhook labels them ``o1pool.io/pool``) reach the
entries; the metrics port stays open to scrapers.

With ``spec.cache.semantic`` the service also runs the semantic layer (``--semantic``), in the cache
image (``--cache-image``): the embedding model and ONNX Runtime live there, not in the sidecar image that
every pod of the pool pulls. Without it the service runs in the sidecar image, which has all L3 needs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from o1operator.objects import POOL_LABEL, object_metadata

PORT = 8470
METRICS_PORT = 8471
COMPONENT = "cache-service"
CONTAINER = "cache-service"
DATA_VOLUME = "data"
DATA_DIR = PurePosixPath("/var/lib/o1pool-cache")
SUFFIX = "-o1pool-cache"
MAX_NAME = 63  # a Service's name is a DNS label
RUN_AS = 65532  # the image's non-root user, as the sidecar's
DEFAULT_RESOURCES = {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "512Mi"}}
# The model in ONNX Runtime (about 300 MB resident), an index of up to maxEntries vectors (1.5 KB
# each: 75 MB at the default 50,000), and a core's share for the embeddings (5-7 ms of CPU a question).
SEMANTIC_RESOURCES = {"requests": {"cpu": "250m", "memory": "512Mi"}, "limits": {"memory": "1Gi"}}


@dataclass(frozen=True)
class Semantic:
    """``spec.cache.semantic`` with its defaults (the CRD's)."""

    threshold: float = 0.95
    max_entries: int = 50_000
    requests: str = "opt_in"
    budget_ms: int = 60


@dataclass(frozen=True)
class Persistent:
    """``spec.cache.persistent`` with its defaults (the CRD's)."""

    claim_name: str | None = None
    max_bytes: int = 1 << 30
    ttl_s: int = 604_800
    budget_ms: int = 30
    resources: Mapping[str, Any] | None = None
    semantic: Semantic | None = None


def get_persistent(spec: Mapping[str, Any]) -> Persistent | None:
    """The pool's cache service settings, or ``None`` when it has none; ``ValueError`` (saying what to
    do) for a semantic layer without the service it lives in."""
    cache = spec.get("cache") or {}
    persistent = cache.get("persistent") or {}
    semantic = cache.get("semantic") or {}
    if not cache.get("enabled", True):
        return None
    if not persistent.get("enabled", False):
        if semantic.get("enabled", False):
            raise ValueError(
                "spec.cache.semantic needs the pool's cache service, where the semantic layer runs and its "
                "answers live: set spec.cache.persistent.enabled: true, or spec.cache.semantic.enabled: false"
            )
        return None
    return Persistent(
        claim_name=persistent.get("claimName"),
        max_bytes=persistent.get("maxBytes", Persistent.max_bytes),
        ttl_s=persistent.get("ttlSeconds", Persistent.ttl_s),
        budget_ms=persistent.get("lookupBudgetMilliseconds", Persistent.budget_ms),
        resources=persistent.get("resources"),
        semantic=_get_semantic(semantic) if semantic.get("enabled", False) else None,
    )


def _get_semantic(semantic: Mapping[str, Any]) -> Semantic:
    return Semantic(
        threshold=semantic.get("threshold", Semantic.threshold),
        max_entries=semantic.get("maxEntries", Semantic.max_entries),
        requests=semantic.get("requests", Semantic.requests),
        budget_ms=semantic.get("lookupBudgetMilliseconds", Semantic.budget_ms),
    )


def cache_service_name(pool: str) -> str:
    """The Deployment's and the Service's name; ``ValueError`` (saying what to do) if it cannot be one."""
    name = pool + SUFFIX
    if len(name) > MAX_NAME or not name[0].isalpha():
        raise ValueError(
            f"spec.cache.persistent needs a Service named {name!r}, which must be a DNS label (at most "
            f"{MAX_NAME} characters, starting with a letter): use a pool name of at most "
            f"{MAX_NAME - len(SUFFIX)} characters that starts with a letter, or turn "
            "spec.cache.persistent off"
        )
    return name


def get_sidecar_settings(pool: Mapping[str, Any], persistent: Persistent) -> dict[str, Any]:
    """The sidecar config's ``cache.service``."""
    meta = pool["metadata"]
    host = f"{cache_service_name(meta['name'])}.{meta.get('namespace', 'default')}.svc"
    settings: dict[str, Any] = {
        "url": f"http://{host}:{PORT}",
        "budget_ms": persistent.budget_ms,
        "ttl_s": persistent.ttl_s,
    }
    if persistent.semantic is not None:
        settings["semantic"] = {
            "requests": persistent.semantic.requests,
            "budget_ms": persistent.semantic.budget_ms,
        }
    return settings


def _selector(pool: Mapping[str, Any]) -> dict[str, str]:
    return {"app.kubernetes.io/component": COMPONENT, POOL_LABEL: pool["metadata"]["name"]}


def _args(persistent: Persistent) -> list[str]:
    args = [
        f"--port={PORT}",
        f"--metrics-port={METRICS_PORT}",
        f"--path={DATA_DIR / 'l3.db'}",
        f"--max-bytes={persistent.max_bytes}",
        f"--max-ttl-s={persistent.ttl_s}",
    ]
    if persistent.semantic is not None:
        args += [
            "--semantic",
            f"--semantic-threshold={persistent.semantic.threshold}",
            f"--semantic-max-entries={persistent.semantic.max_entries}",
        ]
    return args


def get_deployment(pool: Mapping[str, Any], persistent: Persistent, image: str) -> dict[str, Any]:
    name = cache_service_name(pool["metadata"]["name"])
    metadata = object_metadata(pool, name, COMPONENT)
    volume: dict[str, Any] = (
        {"persistentVolumeClaim": {"claimName": persistent.claim_name}}
        if persistent.claim_name
        else {"emptyDir": {}}
    )
    container = {
        "name": CONTAINER,
        "image": image,
        "command": ["o1pool", "cache-service"],
        "args": _args(persistent),
        "ports": [
            {"name": "http", "containerPort": PORT, "protocol": "TCP"},
            {"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"},
        ],
        "readinessProbe": {"httpGet": {"path": "/healthz", "port": METRICS_PORT}, "periodSeconds": 5},
        "livenessProbe": {
            "httpGet": {"path": "/healthz", "port": METRICS_PORT},
            "periodSeconds": 10,
            "failureThreshold": 6,
        },
        "resources": dict(
            persistent.resources or (SEMANTIC_RESOURCES if persistent.semantic else DEFAULT_RESOURCES)
        ),
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": [{"name": DATA_VOLUME, "mountPath": str(DATA_DIR)}],
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata,
        "spec": {
            "replicas": 1,
            "strategy": {"type": "Recreate"},  # one writer of the SQLite file
            "selector": {"matchLabels": _selector(pool)},
            "template": {
                "metadata": {"labels": dict(metadata["labels"])},
                "spec": {
                    "terminationGracePeriodSeconds": 10,  # it stops in well under a second on SIGTERM
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "securityContext": {"fsGroup": RUN_AS, "runAsNonRoot": True},
                    "containers": [container],
                    "volumes": [{"name": DATA_VOLUME, **volume}],
                },
            },
        },
    }


def get_service(pool: Mapping[str, Any]) -> dict[str, Any]:
    name = cache_service_name(pool["metadata"]["name"])
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": object_metadata(pool, name, COMPONENT),
        "spec": {
            "selector": _selector(pool),
            "ports": [
                {"name": "http", "port": PORT, "targetPort": "http", "protocol": "TCP"},
                {"name": "metrics", "port": METRICS_PORT, "targetPort": "metrics", "protocol": "TCP"},
            ],
        },
    }


def get_network_policy(pool: Mapping[str, Any]) -> dict[str, Any]:
    """Entries only to the pool's pods; metrics and health to anyone who can reach the namespace."""
    name = cache_service_name(pool["metadata"]["name"])
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": object_metadata(pool, name, COMPONENT),
        "spec": {
            "podSelector": {"matchLabels": _selector(pool)},
            "policyTypes": ["Ingress"],
            "ingress": [
                {
                    "from": [{"podSelector": {"matchLabels": {POOL_LABEL: pool["metadata"]["name"]}}}],
                    "ports": [{"port": PORT, "protocol": "TCP"}],
                },
                {"ports": [{"port": METRICS_PORT, "protocol": "TCP"}]},
            ],
        },
    }


@dataclass(frozen=True)
class Images:
    """The images the operator runs a pool's cache service in: ``sidecar`` (``--sidecar-image``, or the
    pool's ``spec.injection.image``) for L3 alone; ``cache`` (``--cache-image``), which carries the
    embedding model, when the semantic layer is on."""

    sidecar: str
    cache: str


NO_IMAGES = Images(sidecar="", cache="")  # (tests that never run the pods)


def image_for(pool: Mapping[str, Any], persistent: Persistent, images: Images) -> str:
    if persistent.semantic is not None:
        return images.cache
    return (pool["spec"].get("injection") or {}).get("image") or images.sidecar


def get_manifests(pool: Mapping[str, Any], persistent: Persistent, image: str) -> list[dict[str, Any]]:
    """What the operator applies for a pool with a cache service, in order."""
    return [get_network_policy(pool), get_service(pool), get_deployment(pool, persistent, image)]


KINDS = ("Deployment", "Service", "NetworkPolicy")  # what it deletes when the pool turns it off
