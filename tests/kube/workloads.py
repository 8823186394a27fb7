"""Manifests of what runs on the real node besides the chart: Redis and the emulator behind Services,
an O1Pool with its key Secret, and the app (``o1pool load``) annotated for injection. Pure builders
(dicts for ``kubectl apply``), shared by the end-to-end tests and the cluster demo, and
:func:`emulator_stats`, the referee both read.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import yaml

from tests.kube.images import (
    APP_REFERENCE,
    CACHE_REFERENCE,
    OPERATOR_REFERENCE,
    REDIS_REFERENCE,
    SIDECAR_REFERENCE,
)

if TYPE_CHECKING:
    from tests.kube.fixtures import Cluster

EMULATOR_PORT = 8000
REDIS_PORT = 6379
EMULATOR_CONFIG_MOUNT = "/etc/emulator"


def image_values(reference: str) -> dict[str, str]:
    """``repo:tag`` as the chart's ``{repository, tag}``."""
    repository, _, tag = reference.rpartition(":")
    return {"repository": repository, "tag": tag}


def chart_values(**extra: Any) -> dict[str, Any]:
    """The chart's values for the offline images (never pulled) and upstreams inside the cluster."""
    return {
        "image": {**image_values(OPERATOR_REFERENCE), "pullPolicy": "Never"},
        "sidecarImage": image_values(SIDECAR_REFERENCE),
        "cacheImage": image_values(CACHE_REFERENCE),
        "allowedUpstreamHosts": ["*.svc.cluster.local"],
        "forecastIntervalSeconds": 2,  # (the autoscaling test waits for the operator's rounds)
        **extra,
    }


def service_url(name: str, namespace: str, port: int) -> str:
    return f"{name}.{namespace}.svc.cluster.local:{port}"


def _deployment(
    name: str, container: dict[str, Any], volumes: Sequence[dict[str, Any]] = ()
) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": [container]}
    if volumes:
        spec["volumes"] = list(volumes)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": spec},
        },
    }


def _service(name: str, port: int) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name},
        "spec": {"selector": {"app": name}, "ports": [{"port": port, "targetPort": port}]},
    }


def redis() -> list[dict[str, Any]]:
    container = {
        "name": "redis",
        "image": REDIS_REFERENCE,
        "ports": [{"containerPort": REDIS_PORT}],
        "readinessProbe": {"tcpSocket": {"port": REDIS_PORT}, "periodSeconds": 1},
    }
    return [_deployment("redis", container), _service("redis", REDIS_PORT)]


def emulator(latency_scale: float, config: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """The emulator (from the sidecar's image) behind a Service; its embedded default config unless
    ``config`` is given (then mounted from a ConfigMap)."""
    command = ["o1pool", "emulator", "--host", "0.0.0.0", "--port", str(EMULATOR_PORT)]
    command += ["--latency-scale", str(latency_scale)]
    container: dict[str, Any] = {
        "name": "emulator",
        "image": SIDECAR_REFERENCE,
        "command": command,
        "ports": [{"containerPort": EMULATOR_PORT}],
        "readinessProbe": {"tcpSocket": {"port": EMULATOR_PORT}, "periodSeconds": 1},
    }
    docs: list[dict[str, Any]] = []
    volumes = []
    if config is not None:
        command += ["--config", f"{EMULATOR_CONFIG_MOUNT}/config.yaml"]
        container["volumeMounts"] = [{"name": "config", "mountPath": EMULATOR_CONFIG_MOUNT}]
        volumes.append({"name": "config", "configMap": {"name": "emulator-config"}})
        docs.append(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "emulator-config"},
                "data": {"config.yaml": yaml.safe_dump(dict(config))},
            }
        )
    return [*docs, _deployment("emulator", container, volumes), _service("emulator", EMULATOR_PORT)]


def pool(
    name: str, namespace: str, accounts: Mapping[str, Mapping[str, Any]], keys: Mapping[str, str]
) -> list[dict[str, Any]]:
    """An O1Pool whose accounts (name -> models) call the emulator's Service with one key each
    (``keys``: account -> key value, kept in the Secret ``<name>-keys``), sharing limits through the
    Redis Service."""
    secret = f"{name}-keys"
    return [
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": secret},
            "stringData": dict(keys),
        },
        {
            "apiVersion": "o1pool.io/v1alpha1",
            "kind": "O1Pool",
            "metadata": {"name": name},
            "spec": {
                "accounts": [
                    {
                        "name": account,
                        "kind": "openai",
                        "baseURL": f"http://{service_url('emulator', namespace, EMULATOR_PORT)}/v1",
                        "models": dict(models),
                        "keys": [{"name": "k1", "secretKeyRef": {"name": secret, "key": account}}],
                    }
                    for account, models in accounts.items()
                ],
                "redis": {"url": f"redis://{service_url('redis', namespace, REDIS_PORT)}/0"},
                "queue": {"defaultDeadlineSeconds": 30},
            },
        },
    ]


def _app_pod(pool_name: str, load_args: Sequence[str], restart_policy: str) -> dict[str, Any]:
    return {
        "metadata": {"labels": {"app": "app"}, "annotations": {"o1pool.io/inject": pool_name}},
        "spec": {
            "restartPolicy": restart_policy,
            "terminationGracePeriodSeconds": 30,
            "containers": [
                {
                    "name": "app",
                    "image": APP_REFERENCE,
                    "command": ["o1pool", "load", *load_args],
                    # The SDK wants a key; the sidecar replaces it with the pool's.
                    "env": [{"name": "OPENAI_API_KEY", "value": "unused-the-sidecar-has-the-keys"}],
                }
            ],
        },
    }


def app_deployment(pool_name: str, replicas: int, load_args: Sequence[str]) -> dict[str, Any]:
    """The app as a Deployment: ``o1pool load`` until stopped, in pods annotated for injection."""
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "app"},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "app"}},
            "template": _app_pod(pool_name, load_args, "Always"),
        },
    }


def app_job(pool_name: str, pods: int, load_args: Sequence[str]) -> dict[str, Any]:
    """The app as a Job of ``pods`` pods, each running ``o1pool load`` once to the end."""
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "app"},
        "spec": {
            "parallelism": pods,
            "completions": pods,
            "backoffLimit": 0,
            "template": _app_pod(pool_name, load_args, "Never"),
        },
    }


def dump(docs: Sequence[Mapping[str, Any]]) -> str:
    return yaml.safe_dump_all([dict(d) for d in docs], sort_keys=False)


def emulator_stats(cluster: Cluster, namespace: str) -> dict[str, Any]:
    """The emulator's own counters (``/admin/stats``), through its Service."""
    ip = cluster.service_ip(namespace, "emulator")
    return dict(json.loads(cluster.http_get(f"http://{ip}:{EMULATOR_PORT}/admin/stats")))
