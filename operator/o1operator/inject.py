"""Sidecar injection: the JSONPatch that adds the o1pool sidecar to a pod annotated
``o1pool.io/inject: <pool name>``. Pure: a function of the pod, the pool and the defaults.

The sidecar is a native sidecar (an init container with ``restartPolicy: Always``): it starts, and
passes its startup probe, before the app containers, and stops after them. The app containers get
``OPENAI_BASE_URL`` pointing at the sidecar on loopback unless they set it themselves. The pod gets
the label ``o1pool.io/pool: <pool name>``, and the ``prometheus.io/*`` scrape annotations for the
sidecar's metrics unless it has its own (for a Prometheus that discovers pods by annotation rather than
by the chart's PodMonitor).

The sidecar learns who it serves from its environment (its audit lines and per-tenant accounting):
``O1POOL_NAMESPACE``, ``O1POOL_POD`` and ``O1POOL_SERVICE_ACCOUNT`` from the downward API (a pod made
from ``generateName`` has no name yet at admission), and ``O1POOL_WORKLOAD``, ``<Kind>/<name>`` of the
pod's controller, worked out here (:func:`workload_of`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from o1operator.objects import GROUP, HASH_ANNOTATION, POOL_LABEL
from o1operator.render import CONFIG_FILE, CONFIG_MOUNT, KEY_MOUNT, config_map_name, key_secret_name

INJECT_ANNOTATION = f"{GROUP}/inject"
SIDECAR_NAME = "o1pool-sidecar"
CONFIG_VOLUME = "o1pool-config"
KEYS_VOLUME = "o1pool-keys"
BASE_URL_ENV = "OPENAI_BASE_URL"
DEFAULT_RESOURCES = {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}}
SCRAPE_ANNOTATION = "prometheus.io/scrape"
NAMESPACE_ENV = "O1POOL_NAMESPACE"
POD_ENV = "O1POOL_POD"
SERVICE_ACCOUNT_ENV = "O1POOL_SERVICE_ACCOUNT"
WORKLOAD_ENV = "O1POOL_WORKLOAD"
RUN_AS = 65532  # the sidecar image's non-root user
TEMPLATE_HASH_LABEL = "pod-template-hash"  # what a Deployment's ReplicaSet adds to its name and pods

JsonPatch = list[dict[str, Any]]


_DNS_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")


def is_resource_name(name: str) -> bool:
    return bool(_DNS_NAME.match(name))


def refusal(pool_name: str, namespace: str | None, pool: Mapping[str, Any] | None) -> str | None:
    """Why a pod annotated ``o1pool.io/inject: <pool_name>`` cannot get the sidecar (``None``: it can).
    ``pool`` is the O1Pool of that name in the pod's namespace, if any. A pool that has never rendered
    is refused rather than injected: the pod would mount a ConfigMap that does not exist."""
    if not is_resource_name(pool_name):
        return (
            f"annotation {INJECT_ANNOTATION} must name an O1Pool of the pod's namespace; {pool_name!r} is "
            "not a resource name"
        )
    if pool is None:
        return (
            f"annotation {INJECT_ANNOTATION}={pool_name!r}: no O1Pool {pool_name!r} in namespace {namespace}"
        )
    status = pool.get("status") or {}
    if not status.get("configHash"):
        ready: Mapping[str, Any] = next(
            (c for c in status.get("conditions") or [] if c.get("type") == "Ready"), {}
        )
        why = f" ({ready.get('reason')}: {ready.get('message')})" if ready.get("message") else ""
        return (
            f"O1Pool {pool_name!r} has not been rendered yet{why}; fix it (kubectl describe o1pool "
            f"{pool_name} -n {namespace}) and create the pod again"
        )
    return None


def _pointer(token: str) -> str:
    return token.replace("~", "~0").replace("/", "~1")


def workload_of(pod: Mapping[str, Any]) -> str:
    """``<Kind>/<name>`` of what runs ``pod``: its controller (the ownerReference with ``controller:
    true``), a Deployment rather than the ReplicaSet it made (``<deployment>-<pod-template-hash>``); a
    pod without a controller: ``ServiceAccount/<its service account>``."""
    meta = pod.get("metadata") or {}
    owner = next((o for o in meta.get("ownerReferences") or [] if o.get("controller")), None)
    if owner is None:
        account = (pod.get("spec") or {}).get("serviceAccountName") or "default"
        return f"ServiceAccount/{account}"
    kind, name = str(owner.get("kind")), str(owner.get("name"))
    template_hash = (meta.get("labels") or {}).get(TEMPLATE_HASH_LABEL)
    suffix = f"-{template_hash}"
    if kind == "ReplicaSet" and template_hash and name.endswith(suffix) and len(name) > len(suffix):
        return f"Deployment/{name.removesuffix(suffix)}"
    return f"{kind}/{name}"


def get_identity_env(workload: str) -> list[dict[str, Any]]:
    """The sidecar's environment naming the pod it serves: the downward API, and ``workload``."""

    def field(name: str, path: str) -> dict[str, Any]:
        return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}}

    return [
        field(NAMESPACE_ENV, "metadata.namespace"),
        field(POD_ENV, "metadata.name"),
        field(SERVICE_ACCOUNT_ENV, "spec.serviceAccountName"),
        {"name": WORKLOAD_ENV, "value": workload},
    ]


def sidecar_security_context() -> dict[str, Any]:
    """The sidecar container's securityContext (the injected sidecar's and the gateway's)."""
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},  # Pod Security "restricted" asks for it
    }


def metrics_port(pool: Mapping[str, Any]) -> int:
    return int((pool["spec"].get("injection") or {}).get("metricsPort", 9090))


def sidecar_probes(metrics_port: int) -> dict[str, Any]:
    """The sidecar binary's startup and readiness probes, both on its metrics port (an injected sidecar
    and a gateway alike)."""
    return {
        "startupProbe": {
            "httpGet": {"path": "/metrics", "port": metrics_port},
            "periodSeconds": 1,
            "failureThreshold": 30,
        },
        "readinessProbe": {
            "httpGet": {"path": "/readyz", "port": metrics_port},
            "periodSeconds": 5,
            "failureThreshold": 2,
        },
    }


def get_sidecar_container(pool: Mapping[str, Any], default_image: str, workload: str) -> dict[str, Any]:
    """The sidecar container for a pod of ``workload`` (:func:`workload_of`). Its environment names the
    pod and nothing else: keys reach it as files only."""
    injection = pool["spec"].get("injection") or {}
    port = metrics_port(pool)
    container: dict[str, Any] = {
        "name": SIDECAR_NAME,
        "image": injection.get("image") or default_image,
        "args": ["--config", str(CONFIG_MOUNT / CONFIG_FILE)],
        "env": get_identity_env(workload),
        "restartPolicy": "Always",
        "ports": [{"name": "o1pool-metrics", "containerPort": port, "protocol": "TCP"}],
        # The API listens on the pod's loopback; its readiness is also served on the metrics port.
        **sidecar_probes(port),
        "resources": injection.get("resources") or DEFAULT_RESOURCES,
        "securityContext": sidecar_security_context(),
        "volumeMounts": [
            {"name": CONFIG_VOLUME, "mountPath": str(CONFIG_MOUNT), "readOnly": True},
            {"name": KEYS_VOLUME, "mountPath": str(KEY_MOUNT), "readOnly": True},
        ],
    }
    if injection.get("imagePullPolicy"):
        container["imagePullPolicy"] = injection["imagePullPolicy"]
    if injection.get("logLevel"):
        container["args"] += ["--log-level", injection["logLevel"]]
    return container


def get_volumes(pool_name: str) -> list[dict[str, Any]]:
    return [
        {"name": CONFIG_VOLUME, "configMap": {"name": config_map_name(pool_name)}},
        # Only the sidecar mounts it; 0444 lets the non-root sidecar read keys without an fsGroup.
        {"name": KEYS_VOLUME, "secret": {"secretName": key_secret_name(pool_name), "defaultMode": 0o444}},
    ]


def _append(path: str, existing: list[Any] | None, items: list[Any]) -> JsonPatch:
    if existing is None:
        return [{"op": "add", "path": path, "value": items}]
    return [{"op": "add", "path": f"{path}/-", "value": item} for item in items]


def get_injection_patch(
    pod: Mapping[str, Any], pool: Mapping[str, Any], config_hash: str | None, default_image: str
) -> JsonPatch:
    """JSONPatch ops injecting the sidecar into ``pod``; empty if it is already injected."""
    spec = pod.get("spec") or {}
    init = spec.get("initContainers")
    if any(c.get("name") == SIDECAR_NAME for c in [*(init or []), *spec.get("containers", [])]):
        return []
    pool_name = pool["metadata"]["name"]
    port = (pool["spec"].get("injection") or {}).get("port", 8080)
    patch: JsonPatch = []
    patch += _append("/spec/volumes", spec.get("volumes"), get_volumes(pool_name))
    # Native sidecars must come before the init containers that may call the API.
    sidecar = get_sidecar_container(pool, default_image, workload_of(pod))
    if init is None:
        patch.append({"op": "add", "path": "/spec/initContainers", "value": [sidecar]})
    else:
        patch.append({"op": "add", "path": "/spec/initContainers/0", "value": sidecar})
    base_url = {"name": BASE_URL_ENV, "value": f"http://127.0.0.1:{port}/v1"}
    for index, container in enumerate(spec.get("containers", [])):
        env = container.get("env")
        if not any(e.get("name") == BASE_URL_ENV for e in env or []):
            patch += _append(f"/spec/containers/{index}/env", env, [base_url])
    labels = (pod.get("metadata") or {}).get("labels")
    if labels is None:  # the pool's pods: what its cache service's NetworkPolicy lets in
        patch.append({"op": "add", "path": "/metadata/labels", "value": {POOL_LABEL: pool_name}})
    else:
        patch.append({"op": "add", "path": f"/metadata/labels/{_pointer(POOL_LABEL)}", "value": pool_name})
    annotations = (pod.get("metadata") or {}).get("annotations")
    added = {HASH_ANNOTATION: config_hash} if config_hash else {}
    if SCRAPE_ANNOTATION not in (annotations or {}):  # (a pod scraped for its own metrics keeps that)
        added |= {SCRAPE_ANNOTATION: "true", "prometheus.io/port": str(metrics_port(pool))}
        added |= {"prometheus.io/path": "/metrics"}
    if annotations is None:
        patch.append({"op": "add", "path": "/metadata/annotations", "value": added})
    else:
        patch += [
            {"op": "add", "path": f"/metadata/annotations/{_pointer(name)}", "value": value}
            for name, value in added.items()
        ]
    return patch
