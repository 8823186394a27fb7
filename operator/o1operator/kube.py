"""The operator's Kubernetes I/O: read referenced Secrets, server-side apply owned objects, patch status.

Every verb used here is listed in the chart's RBAC (helm/o1pool/templates/rbac.yaml); nothing else is
called. Secret data is returned to the caller and never logged.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, cast

import kopf
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from o1operator.objects import GROUP, KIND, PLURAL, VERSION

FIELD_MANAGER = "o1pool-operator"
APPLY = "application/apply-patch+yaml"
MERGE = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"


def load_configuration(kubeconfig: str | None = None) -> client.Configuration:
    """Client settings from ``kubeconfig``, else $KUBECONFIG / ~/.kube/config, else in-cluster."""
    configuration = client.Configuration()
    path = kubeconfig or os.environ.get("KUBECONFIG")
    if path or not os.environ.get("KUBERNETES_SERVICE_HOST"):
        config.load_kube_config(config_file=path, client_configuration=configuration)
    else:
        config.load_incluster_config(client_configuration=configuration)
    return configuration


def connection_info(configuration: client.Configuration) -> kopf.ConnectionInfo:
    """The same credentials for kopf's own API calls (as kopf.login_via_client derives them)."""
    header = configuration.get_api_key_with_prefix("BearerToken") or configuration.get_api_key_with_prefix(
        "authorization"
    )
    scheme, _, token = (header or "").rpartition(" ")
    return kopf.ConnectionInfo(
        server=configuration.host,
        ca_path=configuration.ssl_ca_cert,
        insecure=not configuration.verify_ssl,
        username=configuration.username or None,
        password=configuration.password or None,
        scheme=scheme or None,
        token=token or None,
        certificate_path=configuration.cert_file,
        private_key_path=configuration.key_file,
    )


class Kube:
    """Thin typed wrapper over the calls the reconciler makes."""

    def __init__(self, configuration: client.Configuration) -> None:
        self.configuration = configuration
        api = client.ApiClient(configuration)
        self.api = api
        self.core = client.CoreV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self.apps = client.AppsV1Api(api)
        self.autoscaling = client.AutoscalingV2Api(api)
        self.networking = client.NetworkingV1Api(api)

    def read_secrets(self, namespace: str, names: Iterable[str]) -> dict[str, dict[str, str]]:
        """``data`` (base64 values) of each named Secret that exists; missing ones are left out."""
        found: dict[str, dict[str, str]] = {}
        for name in sorted(names):
            try:
                secret = self.core.read_namespaced_secret(name, namespace)
            except ApiException as exc:
                if exc.status == 404:
                    continue
                raise
            found[name] = {str(k): str(v) for k, v in (secret.data or {}).items()}
        return found

    def apply(self, manifest: Mapping[str, Any]) -> None:
        """Server-side apply as the operator's field manager (fields it no longer sets are removed)."""
        meta = manifest["metadata"]
        patch = {
            "ConfigMap": self.core.patch_namespaced_config_map,
            "Secret": self.core.patch_namespaced_secret,
            "Service": self.core.patch_namespaced_service,
            "Deployment": self.apps.patch_namespaced_deployment,
            "NetworkPolicy": self.networking.patch_namespaced_network_policy,
        }[manifest["kind"]]
        patch(
            meta["name"],
            meta["namespace"],
            dict(manifest),
            field_manager=FIELD_MANAGER,
            force=True,
            _content_type=APPLY,
        )

    def delete(self, kind: str, namespace: str, name: str) -> None:
        """Delete an object the operator made (one that is already gone is fine)."""
        delete = {
            "ConfigMap": self.core.delete_namespaced_config_map,
            "Service": self.core.delete_namespaced_service,
            "Deployment": self.apps.delete_namespaced_deployment,
            "NetworkPolicy": self.networking.delete_namespaced_network_policy,
        }[kind]
        try:
            delete(name, namespace)
        except ApiException as exc:
            if exc.status != 404:
                raise

    def get_pool(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            pool = self.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return cast(dict[str, Any], pool)

    def post_event(self, pool: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        """A core/v1 Event about ``pool``, for changes seen outside a kopf handler (sidecars.py)."""
        meta = pool["metadata"]
        now = datetime.now(UTC)
        self.core.create_namespaced_event(
            meta["namespace"],
            client.CoreV1Event(
                metadata=client.V1ObjectMeta(generate_name=f"{meta['name']}."),
                involved_object=client.V1ObjectReference(
                    api_version=f"{GROUP}/{VERSION}",
                    kind=KIND,
                    name=meta["name"],
                    namespace=meta["namespace"],
                    uid=meta.get("uid"),
                ),
                type=type_,
                reason=reason,
                message=message[:1024],
                first_timestamp=now,
                last_timestamp=now,
                count=1,
                source=client.V1EventSource(component=FIELD_MANAGER),
            ),
        )

    def list_pools(self, namespaces: list[str]) -> list[tuple[str, str]]:
        """(namespace, name) of every O1Pool in ``namespaces`` (every namespace when empty)."""
        lists: list[dict[str, Any]]
        if not namespaces:
            lists = [cast(dict[str, Any], self.custom.list_cluster_custom_object(GROUP, VERSION, PLURAL))]
        else:
            lists = [
                cast(dict[str, Any], self.custom.list_namespaced_custom_object(GROUP, VERSION, ns, PLURAL))
                for ns in namespaces
            ]
        items = [item for found in lists for item in found.get("items", [])]
        return sorted((i["metadata"]["namespace"], i["metadata"]["name"]) for i in items)

    def remove_finalizer(self, pool: Mapping[str, Any], finalizer: str) -> bool:
        """Drop ``finalizer`` from ``pool`` if it has it (JSON patch, guarded by the list it tests)."""
        finalizers = list(pool["metadata"].get("finalizers") or [])
        if finalizer not in finalizers:
            return False
        meta = pool["metadata"]
        index = finalizers.index(finalizer)
        patch = [
            {"op": "test", "path": f"/metadata/finalizers/{index}", "value": finalizer},
            {"op": "remove", "path": f"/metadata/finalizers/{index}"},
        ]
        try:
            self.custom.patch_namespaced_custom_object(
                GROUP, VERSION, meta["namespace"], PLURAL, meta["name"], patch, _content_type=JSON_PATCH
            )
        except ApiException as exc:
            if exc.status in (404, 409, 422):  # gone, or the list changed meanwhile (kopf removed it)
                return False
            raise
        return True

    def patch_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, PLURAL, name, {"status": status}, _content_type=MERGE
        )

    # -- the scaler's calls (autoscale.py) ----------------------------------------------------------

    def get_workload(self, namespace: str, kind: str, name: str) -> dict[str, Any] | None:
        """A Deployment or StatefulSet as plain JSON (camelCase), or None when there is none."""
        read = {
            "Deployment": self.apps.read_namespaced_deployment,
            "StatefulSet": self.apps.read_namespaced_stateful_set,
        }[kind]
        try:
            found = read(name, namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return {**self._json(found), "kind": kind}

    def list_hpas(self, namespace: str) -> list[dict[str, Any]]:
        found = self.autoscaling.list_namespaced_horizontal_pod_autoscaler(namespace)
        return [self._json(item) for item in found.items]

    def list_pods(self, namespace: str, match_labels: Mapping[str, str]) -> list[dict[str, Any]]:
        selector = ",".join(f"{k}={v}" for k, v in sorted(match_labels.items()))
        found = self.core.list_namespaced_pod(namespace, label_selector=selector)
        return [self._json(item) for item in found.items]

    def patch_hpa(self, namespace: str, name: str, patch: Mapping[str, Any]) -> None:
        self.autoscaling.patch_namespaced_horizontal_pod_autoscaler(
            name, namespace, dict(patch), _content_type=MERGE
        )

    def scale_workload(self, namespace: str, kind: str, name: str, replicas: int) -> None:
        """Set the replicas of a Deployment or StatefulSet through its scale subresource."""
        patch = {
            "Deployment": self.apps.patch_namespaced_deployment_scale,
            "StatefulSet": self.apps.patch_namespaced_stateful_set_scale,
        }[kind]
        patch(name, namespace, {"spec": {"replicas": replicas}}, _content_type=MERGE)

    def _json(self, obj: Any) -> dict[str, Any]:
        return cast(dict[str, Any], self.api.sanitize_for_serialization(obj))
