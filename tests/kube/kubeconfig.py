"""Kubeconfig files for the test ground: client-certificate users and bearer-token users."""

from __future__ import annotations

import base64
from pathlib import Path

import yaml

CLUSTER_NAME = "o1pool-testground"


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode("ascii")


def _write(path: Path, server: str, ca_cert: Path, user_name: str, user: dict[str, str]) -> Path:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": CLUSTER_NAME,
                "cluster": {"server": server, "certificate-authority-data": _b64(ca_cert)},
            }
        ],
        "users": [{"name": user_name, "user": user}],
        "contexts": [
            {
                "name": f"{user_name}@{CLUSTER_NAME}",
                "context": {"cluster": CLUSTER_NAME, "user": user_name, "namespace": "default"},
            }
        ],
        "current-context": f"{user_name}@{CLUSTER_NAME}",
        "preferences": {},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)
    return path


def write_cert_kubeconfig(
    path: Path, server: str, ca_cert: Path, user_name: str, client_cert: Path, client_key: Path
) -> Path:
    """A kubeconfig that authenticates with a client certificate (all data embedded)."""
    user = {"client-certificate-data": _b64(client_cert), "client-key-data": _b64(client_key)}
    return _write(path, server, ca_cert, user_name, user)


def write_token_kubeconfig(path: Path, server: str, ca_cert: Path, user_name: str, token: str) -> Path:
    """A kubeconfig that authenticates with a bearer token (e.g. a ServiceAccount's)."""
    return _write(path, server, ca_cert, user_name, {"token": token})
