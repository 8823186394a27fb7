"""Which workload this sidecar serves: its pod's namespace, name, service account and owning workload
(``Deployment/web``), stamped by the operator's webhook as environment variables (the first three
through the downward API, the workload computed from the pod's owner at admission). A sidecar started
by hand has none of them: each is then empty."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

NAMESPACE_ENV = "O1POOL_NAMESPACE"
POD_ENV = "O1POOL_POD"
SERVICE_ACCOUNT_ENV = "O1POOL_SERVICE_ACCOUNT"
WORKLOAD_ENV = "O1POOL_WORKLOAD"
MAX_CHARS = 320  # a Kubernetes kind and name fit; anything longer was not stamped by the webhook


@dataclass(frozen=True)
class Identity:
    namespace: str = ""
    pod: str = ""
    service_account: str = ""
    workload: str = ""

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Identity:
        def read(name: str) -> str:
            value = env.get(name, "").strip()
            return value if len(value) <= MAX_CHARS and value.isprintable() else ""

        return cls(read(NAMESPACE_ENV), read(POD_ENV), read(SERVICE_ACCOUNT_ENV), read(WORKLOAD_ENV))

    def as_dict(self) -> dict[str, str]:
        return {
            "namespace": self.namespace,
            "pod": self.pod,
            "service_account": self.service_account,
            "workload": self.workload,
        }
