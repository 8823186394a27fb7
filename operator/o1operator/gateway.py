"""A pool's gateway (``spec.gateway``): the sidecar binary as a pool-level Deployment and Service for
callers that cannot carry a sidecar, each known by one of a client's virtual keys
(docs/tenants.md#gateway-mode, docs/operator.md#gateway). Pure builders, as in cacheservice.py.

The gateway's config is the pool's sidecar config plus what only a gateway has: ``gateway`` (with the
TLS files when ``spec.gateway.tlsSecretName`` is set), each client's ``virtual_keys`` as files where
their Secrets are mounted, the API on ``0.0.0.0`` at the gateway's port, metrics on 9090. It lives in
a ConfigMap of its own, ``<pool>-gateway-config``: the sidecars' config stays what it was when a
gateway is added, and never names a virtual key.

The virtual keys reach the pods as a projected volume of the referenced Secrets' items; the operator
never copies them. A virtual key whose Secret or item is missing, empty, or a malformed digest is left
out of both the config and the volume, so the Deployment never references what is not there, and the
pool's status names it; with no usable virtual key at all the gateway is not rendered. The sidecar
reads the virtual keys, the TLS pair and the Redis password at start, so the pod template carries an
HMAC (under the pool's salt, as ``render.get_config_hash``) of the gateway's config and of those: a
rotation of any of them rolls the gateway; the values themselves appear nowhere but in the Secrets.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import PurePosixPath
from typing import Any

import yaml

from o1operator.cacheservice import Images
from o1operator.inject import RUN_AS, sidecar_probes, sidecar_security_context
from o1operator.objects import HASH_ANNOTATION, POOL_LABEL, object_metadata
from o1operator.render import (
    CONFIG_FILE,
    CONFIG_MOUNT,
    KEY_MOUNT,
    REDIS_CA_FILE,
    REDIS_PASSWORD_FILE,
    SALT_FILE,
    RenderError,
    Rendering,
    SecretsData,
    decode,
    get_client_config,
    get_config_hash,
    key_problem,
    key_secret_name,
)
from o1sidecar.clients import DIGEST_PREFIX
from o1sidecar.config import ConfigError, SidecarConfig

SUFFIX = "-gateway"
CONFIG_SUFFIX = "-gateway-config"
MAX_NAME = 63  # a Service's name is a DNS label
COMPONENT = "gateway"  # the pods' app.kubernetes.io/component: what the chart's NetworkPolicy selects
CONFIG_COMPONENT = "gateway-config"
CONTAINER = "o1pool-gateway"
HTTP_PORT = 8080
HTTPS_PORT = 8443
METRICS_PORT = 9090
METRICS_PORT_NAME = "o1pool-metrics"  # the port the chart's sidecar PodMonitor scrapes
VIRTUAL_KEY_MOUNT = PurePosixPath("/etc/o1pool/virtual-keys")
TLS_MOUNT = PurePosixPath("/etc/o1pool/tls")
TLS_CERT = "tls.crt"
TLS_KEY = "tls.key"
CONFIG_VOLUME = "config"
KEYS_VOLUME = "keys"
VIRTUAL_KEYS_VOLUME = "virtual-keys"
TLS_VOLUME = "tls"
SECRET_MODE = 0o440  # read by the pod's fsGroup (the sidecar's user), by no one else
DEFAULT_RESOURCES = {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}}
KINDS = ("Deployment", "Service", "ConfigMap")  # what it deletes when the pool turns it off
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")  # (as o1sidecar.clients reads a stored digest)


@dataclass(frozen=True)
class Settings:
    """``spec.gateway`` with its defaults (the CRD's; the port's depends on TLS)."""

    replicas: int = 2
    port: int | None = None
    tls_secret: str | None = None
    service_type: str = "ClusterIP"
    resources: Mapping[str, Any] | None = None

    @property
    def api_port(self) -> int:
        if self.port is not None:
            return self.port
        return HTTPS_PORT if self.tls_secret else HTTP_PORT

    @property
    def port_name(self) -> str:
        """The API port's name in the container and the Service."""
        return "https" if self.tls_secret else "http"


def get_settings(spec: Mapping[str, Any]) -> Settings | None:
    """The pool's gateway settings, or ``None`` when it has no gateway."""
    gateway = spec.get("gateway") or {}
    if not gateway.get("enabled", False):
        return None
    return Settings(
        replicas=gateway.get("replicas", Settings.replicas),
        port=gateway.get("port"),
        tls_secret=gateway.get("tlsSecretName") or None,
        service_type=gateway.get("serviceType", Settings.service_type),
        resources=gateway.get("resources"),
    )


@dataclass(frozen=True)
class VirtualKeyState:
    """One virtual key the spec references and whether its Secret provides it."""

    client: str
    name: str
    secret: str
    secret_key: str
    problem: str | None = None
    """``None`` if usable; otherwise SecretNotFound, SecretKeyNotFound, KeyEmpty or DigestInvalid."""

    @property
    def ready(self) -> bool:
        return self.problem is None

    @property
    def file_name(self) -> str:
        """The file under the virtual-key mount. Client names are DNS labels: the dot is unambiguous."""
        return f"{self.client}.{self.name}"

    def describe_problem(self) -> str:
        where = f"client {self.client}, virtual key {self.name}"
        if self.problem == "SecretNotFound":
            return f"Secret {self.secret!r} not found ({where})"
        if self.problem == "SecretKeyNotFound":
            return f"Secret {self.secret!r} has no key {self.secret_key!r} ({where})"
        if self.problem == "DigestInvalid":
            return (
                f"Secret {self.secret!r} key {self.secret_key!r} starts with {DIGEST_PREFIX} but is not "
                f"{DIGEST_PREFIX} and 64 lowercase hex digits ({where}); store the digest o1pool virtual-key "
                "prints, or the key itself"
            )
        return f"Secret {self.secret!r} key {self.secret_key!r} is empty ({where})"


def _virtual_key_problem(ref: Mapping[str, str], secrets: SecretsData) -> str | None:
    problem = key_problem(ref, secrets)
    if problem is not None:
        return problem
    value = (decode(secrets[ref["name"]][ref["key"]]) or "").strip()
    if value.startswith(DIGEST_PREFIX) and not _DIGEST.match(value):
        return "DigestInvalid"
    return None


def get_virtual_key_states(spec: Mapping[str, Any], secrets: SecretsData) -> tuple[VirtualKeyState, ...]:
    return tuple(
        VirtualKeyState(
            client["name"], key["name"], ref["name"], ref["key"], _virtual_key_problem(ref, secrets)
        )
        for client in spec.get("clients") or []
        for key in client.get("virtualKeys") or []
        for ref in [key["secretRef"]]
    )


def gateway_name(pool: str) -> str:
    """The Deployment's and the Service's name; ``ValueError`` (saying what to do) if it cannot be one."""
    name = pool + SUFFIX
    if len(name) > MAX_NAME or not name[0].isalpha():
        raise ValueError(
            f"spec.gateway needs a Service named {name!r}, which must be a DNS label (at most {MAX_NAME} "
            f"characters, starting with a letter): use a pool name of at most {MAX_NAME - len(SUFFIX)} "
            "characters that starts with a letter, or set spec.gateway.enabled: false"
        )
    return name


def config_map_name(pool: str) -> str:
    return pool + CONFIG_SUFFIX


@dataclass(frozen=True)
class GatewayRendering:
    """The pool's gateway as rendered from its spec and Secrets. If it cannot run, ``error`` is set and
    ``config_yaml`` is None (nothing is applied: a gateway already running keeps what it has)."""

    pool: str
    name: str
    settings: Settings
    keys: tuple[VirtualKeyState, ...] = ()
    config_yaml: str | None = None
    config_hash: str | None = None
    grace_s: float = 25.0  # the config's shutdown.grace_s: the pod's termination grace follows it
    error: RenderError | None = None
    config: SidecarConfig | None = None  # the validated config that config_yaml is

    @property
    def keys_ready(self) -> int:
        return sum(k.ready for k in self.keys)

    @property
    def problems(self) -> list[str]:
        """What is wrong with each virtual key left out, naming its Secret and key, never a value."""
        return [k.describe_problem() for k in self.keys if not k.ready]

    @property
    def config_map_name(self) -> str:
        return config_map_name(self.pool)


def _tls_problem(name: str, secrets: SecretsData, namespace: str) -> RenderError | None:
    data = secrets.get(name)
    create = (
        f"kubectl create secret tls {name} -n {namespace} --cert=<chain.pem> --key=<key.pem>, or unset "
        "spec.gateway.tlsSecretName to serve plain HTTP"
    )
    if data is None:
        return RenderError(
            "GatewayTLSSecretNotFound",
            f"Secret {name!r} (spec.gateway.tlsSecretName) not found: create it ({create})",
        )
    bad = [item for item in (TLS_CERT, TLS_KEY) if not (decode(data.get(item, "")) or "").strip()]
    if bad:
        return RenderError(
            "GatewayTLSSecretInvalid",
            f"Secret {name!r} (spec.gateway.tlsSecretName) has no (or an empty) {' and '.join(bad)}: make it "
            f"a kubernetes.io/tls Secret ({create})",
        )
    return None


def get_gateway_config(
    rendering: Rendering,
    settings: Settings,
    keys: tuple[VirtualKeyState, ...],
    clients: Sequence[Mapping[str, Any]],
) -> dict[str, Any]:
    """The gateway's config (unvalidated dict): the pool's sidecar config as rendered, listening on every
    address at the gateway's port, metrics on ``METRICS_PORT``, ``gateway`` on, with all the pool's
    ``clients`` (the sidecars' config leaves out those only a gateway serves) and each one's usable
    virtual keys as files under ``VIRTUAL_KEY_MOUNT``."""
    assert rendering.config_yaml is not None
    config: dict[str, Any] = yaml.safe_load(rendering.config_yaml)
    config["clients"] = [get_client_config(c) for c in clients]
    config["listen"] = {"host": "0.0.0.0", "port": settings.api_port}
    config["metrics"] = {"host": "0.0.0.0", "port": METRICS_PORT}
    gateway: dict[str, Any] = {"enabled": True}
    if settings.tls_secret:
        gateway |= {"tls_cert_file": str(TLS_MOUNT / TLS_CERT), "tls_key_file": str(TLS_MOUNT / TLS_KEY)}
    config["gateway"] = gateway
    for client in config.get("clients") or []:
        usable = [k for k in keys if k.client == client["name"] and k.ready]
        if usable:
            client["virtual_keys"] = [
                {"name": k.name, "file": str(VIRTUAL_KEY_MOUNT / k.file_name)} for k in usable
            ]
    # A gateway-only client none of whose keys is usable has no caller here (its keys are named in
    # the problems): left out rather than refused.
    config["clients"] = [c for c in config["clients"] if "match" in c or c.get("virtual_keys")]
    return config


def render_gateway(
    pool: Mapping[str, Any], rendering: Rendering, secrets: SecretsData
) -> GatewayRendering | None:
    """The pool's gateway given its sidecar ``rendering`` and the data of the Secrets that exist;
    ``None`` when it has no gateway, or when its sidecar config did not render (nothing to build on).
    Never raises for a bad pool: the problem is in ``GatewayRendering.error``."""
    meta, spec = pool["metadata"], pool["spec"]
    settings = get_settings(spec)
    if settings is None or rendering.config_yaml is None:
        return None
    keys = get_virtual_key_states(spec, secrets)
    base = GatewayRendering(pool=meta["name"], name=meta["name"] + SUFFIX, settings=settings, keys=keys)

    def failed(reason: str, message: str) -> GatewayRendering:
        return replace(base, error=RenderError(reason, message))

    try:
        base = replace(base, name=gateway_name(meta["name"]))
    except ValueError as exc:
        return failed("GatewayInvalidConfig", str(exc))
    if settings.tls_secret:
        problem = _tls_problem(settings.tls_secret, secrets, meta.get("namespace", "default"))
        if problem is not None:
            return failed(problem.reason, problem.message)
    if not any(k.ready for k in keys):
        return failed(
            "NoUsableVirtualKeys",
            "the gateway answers only callers with a client's virtual key, and no virtual key is usable: "
            + "; ".join(base.problems),
        )
    try:
        config = SidecarConfig.from_dict(
            get_gateway_config(rendering, settings, keys, spec.get("clients") or []),
            source=f"O1Pool {rendering.namespace}/{rendering.name}, its gateway's config",
        )
    except (ConfigError, ValueError) as exc:
        return failed("GatewayInvalidConfig", str(exc))
    config_yaml = config.to_yaml()
    # What the gateway reads only at start, besides the config: a change of any of it rolls the pods.
    hashed = {
        name: rendering.key_data[name]
        for name in (SALT_FILE, REDIS_PASSWORD_FILE, REDIS_CA_FILE)
        if name in rendering.key_data
    }
    hashed |= {f"virtual-keys/{k.file_name}": secrets[k.secret][k.secret_key] for k in keys if k.ready}
    if settings.tls_secret:
        hashed |= {f"tls/{item}": secrets[settings.tls_secret][item] for item in (TLS_CERT, TLS_KEY)}
    return replace(
        base,
        config_yaml=config_yaml,
        config_hash=get_config_hash(config_yaml, hashed),
        grace_s=config.shutdown.grace_s,
        config=config,
    )


def _selector(pool: Mapping[str, Any]) -> dict[str, str]:
    return {"app.kubernetes.io/component": COMPONENT, POOL_LABEL: pool["metadata"]["name"]}


def get_config_map(pool: Mapping[str, Any], gateway: GatewayRendering) -> dict[str, Any]:
    assert gateway.config_yaml is not None and gateway.config_hash is not None
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": object_metadata(pool, gateway.config_map_name, CONFIG_COMPONENT, gateway.config_hash),
        "data": {CONFIG_FILE: gateway.config_yaml},
    }


def get_volumes(pool: Mapping[str, Any], gateway: GatewayRendering) -> list[dict[str, Any]]:
    """The gateway's config, the pool's key Secret (as the sidecars mount it), the usable virtual keys
    (one projected volume, an item per key) and the TLS Secret."""
    by_secret: dict[str, list[dict[str, str]]] = {}
    for key in gateway.keys:
        if key.ready:
            by_secret.setdefault(key.secret, []).append({"key": key.secret_key, "path": key.file_name})
    volumes: list[dict[str, Any]] = [
        {"name": CONFIG_VOLUME, "configMap": {"name": gateway.config_map_name}},
        {
            "name": KEYS_VOLUME,
            "secret": {"secretName": key_secret_name(pool["metadata"]["name"]), "defaultMode": SECRET_MODE},
        },
        {
            "name": VIRTUAL_KEYS_VOLUME,
            "projected": {
                "defaultMode": SECRET_MODE,
                "sources": [{"secret": {"name": name, "items": items}} for name, items in by_secret.items()],
            },
        },
    ]
    if gateway.settings.tls_secret:
        items = [{"key": item, "path": item} for item in (TLS_CERT, TLS_KEY)]
        secret = {"secretName": gateway.settings.tls_secret, "defaultMode": SECRET_MODE, "items": items}
        volumes.append({"name": TLS_VOLUME, "secret": secret})
    return volumes


def get_container(pool: Mapping[str, Any], gateway: GatewayRendering, image: str) -> dict[str, Any]:
    """The sidecar binary in gateway mode; keys reach it as files only, its environment is empty."""
    injection = pool["spec"].get("injection") or {}
    settings = gateway.settings
    mounts = [
        {"name": CONFIG_VOLUME, "mountPath": str(CONFIG_MOUNT), "readOnly": True},
        {"name": KEYS_VOLUME, "mountPath": str(KEY_MOUNT), "readOnly": True},
        {"name": VIRTUAL_KEYS_VOLUME, "mountPath": str(VIRTUAL_KEY_MOUNT), "readOnly": True},
    ]
    if settings.tls_secret:
        mounts.append({"name": TLS_VOLUME, "mountPath": str(TLS_MOUNT), "readOnly": True})
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": image,
        "args": ["--config", str(CONFIG_MOUNT / CONFIG_FILE)],
        "ports": [
            {"name": settings.port_name, "containerPort": settings.api_port, "protocol": "TCP"},
            {"name": METRICS_PORT_NAME, "containerPort": METRICS_PORT, "protocol": "TCP"},
        ],
        # Ready once the virtual keys and upstream keys are read and the API listens (on the metrics port).
        **sidecar_probes(METRICS_PORT),
        "resources": dict(settings.resources or DEFAULT_RESOURCES),
        "securityContext": sidecar_security_context(),
        "volumeMounts": mounts,
    }
    if injection.get("imagePullPolicy"):
        container["imagePullPolicy"] = injection["imagePullPolicy"]
    if injection.get("logLevel"):
        container["args"] += ["--log-level", injection["logLevel"]]
    return container


def get_deployment(pool: Mapping[str, Any], gateway: GatewayRendering, image: str) -> dict[str, Any]:
    assert gateway.config_hash is not None
    metadata = object_metadata(pool, gateway.name, COMPONENT)
    annotations = {
        HASH_ANNOTATION: gateway.config_hash,  # a new config, virtual key or TLS pair rolls the pods
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(METRICS_PORT),
        "prometheus.io/path": "/metrics",
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata,
        "spec": {
            "replicas": gateway.settings.replicas,
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "selector": {"matchLabels": _selector(pool)},
            "template": {
                "metadata": {"labels": dict(metadata["labels"]), "annotations": annotations},
                "spec": {
                    # Calls in flight get shutdown.grace_s after SIGTERM (the sidecar drains), then a margin.
                    "terminationGracePeriodSeconds": math.ceil(gateway.grace_s) + 5,
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "securityContext": {
                        "runAsNonRoot": True,
                        "fsGroup": RUN_AS,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "topologySpreadConstraints": [
                        {
                            "maxSkew": 1,
                            "topologyKey": "kubernetes.io/hostname",
                            "whenUnsatisfiable": "ScheduleAnyway",
                            "labelSelector": {"matchLabels": _selector(pool)},
                        }
                    ],
                    "containers": [get_container(pool, gateway, image)],
                    "volumes": get_volumes(pool, gateway),
                },
            },
        },
    }


def get_service(pool: Mapping[str, Any], gateway: GatewayRendering) -> dict[str, Any]:
    """The API port only: the metrics are scraped from the pods, never exposed with a NodePort or a
    LoadBalancer."""
    settings = gateway.settings
    port = {
        "name": settings.port_name,
        "port": settings.api_port,
        "targetPort": settings.port_name,
        "protocol": "TCP",
    }
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": object_metadata(pool, gateway.name, COMPONENT),
        "spec": {"type": settings.service_type, "selector": _selector(pool), "ports": [port]},
    }


def image_for(pool: Mapping[str, Any], images: Images) -> str:
    """The sidecar image, as the webhook injects it: the pool's ``spec.injection.image``, or the
    operator's ``--sidecar-image``."""
    return (pool["spec"].get("injection") or {}).get("image") or images.sidecar


def get_manifests(pool: Mapping[str, Any], gateway: GatewayRendering, image: str) -> list[dict[str, Any]]:
    """What the operator applies for a pool's gateway, in order (the ConfigMap before the pods mount it)."""
    return [get_config_map(pool, gateway), get_service(pool, gateway), get_deployment(pool, gateway, image)]


def names_of(pool_name: str, gateway: str) -> dict[str, str]:
    """Kind -> name of what a pool's gateway (``status.gateway``) consists of, to delete it."""
    return {"Deployment": gateway, "Service": gateway, "ConfigMap": config_map_name(pool_name)}
