"""The mutating admission webhook that injects the sidecar (imported only when the CLI enables it).

kopf serves it (``kopf.WebhookServer`` on the given port with the chart's certificate); the
MutatingWebhookConfiguration comes from the chart, whose ``matchConditions`` send only pods that
carry the ``o1pool.io/inject`` annotation. The handler stays thin: it looks up the pool and applies
the JSONPatch built by :func:`o1operator.inject.get_injection_patch`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import jsonpatch
import kopf

from o1operator.inject import INJECT_ANNOTATION, get_injection_patch, is_resource_name, refusal

WEBHOOK_ID = "inject-sidecar"


@dataclass(frozen=True)
class WebhookOptions:
    port: int
    certfile: str
    keyfile: str
    sidecar_image: str
    addr: str = "0.0.0.0"


@kopf.on.startup()
def configure_webhook_server(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    options: WebhookOptions = memo.webhook
    settings.admission.server = kopf.WebhookServer(
        addr=options.addr, port=options.port, certfile=options.certfile, pkeyfile=options.keyfile
    )
    settings.admission.managed = None  # the chart owns the MutatingWebhookConfiguration


@kopf.on.mutate(
    "", "v1", "pods", id=WEBHOOK_ID, operations=["CREATE"], annotations={INJECT_ANNOTATION: kopf.PRESENT}
)
def inject_sidecar(
    body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, logger: logging.Logger, **_: Any
) -> None:
    started, result = time.perf_counter(), "error"
    try:
        pool_name = str(body["metadata"]["annotations"][INJECT_ANNOTATION])
        namespace = body["metadata"].get("namespace")
        named = namespace and is_resource_name(pool_name)
        pool = memo.kube.get_pool(namespace, pool_name) if named else None
        why = refusal(pool_name, namespace, pool)
        if why is not None:
            result = "refused"
            raise kopf.AdmissionError(why, code=400)
        assert pool is not None
        config_hash = (pool.get("status") or {}).get("configHash")
        ops = get_injection_patch(body, pool, config_hash, memo.webhook.sidecar_image)
        if ops:
            patch.fns.append(lambda doc: jsonpatch.apply_patch(doc, ops, in_place=True))
        result = "injected" if ops else "unchanged"
    finally:
        memo.metrics.admitted(result, time.perf_counter() - started)
