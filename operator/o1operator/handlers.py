"""kopf handlers: thin glue from watch events to :func:`o1operator.reconcile.reconcile_pool`.

Pools are (re)rendered when created, changed, or when the operator starts; a Secret event re-renders
every pool that references that Secret (found through the ``pools_by_secret`` index); a timer
re-renders every pool every ``O1POOL_RESYNC_SECONDS`` (300 by default).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

import kopf

from o1operator.kube import connection_info
from o1operator.reconcile import reconcile_pool
from o1operator.render import GROUP, PLURAL, VERSION, referenced_secrets
from o1operator.settings import configure

RESYNC_S = float(os.environ.get("O1POOL_RESYNC_SECONDS", "300"))


@kopf.on.startup()
def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
    configure(settings)


@kopf.on.login()
def login(memo: kopf.Memo, **_: Any) -> kopf.ConnectionInfo:
    return connection_info(memo.kube.configuration)


def post_event(pool: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
    kopf.event(dict(pool), type=type_, reason=reason, message=message)


def reconcile(memo: kopf.Memo, pool: Mapping[str, Any], logger: logging.Logger) -> None:
    meta = pool["metadata"]
    refused, outages = memo.observed.get((meta["namespace"], meta["name"]), ((), None))
    reconcile_pool(
        memo.kube,
        pool,
        post_event,
        logger,
        memo.probes,
        refused=refused,
        outages=outages,
        allowed_hosts=memo.allowed_hosts,
    )


@kopf.index(GROUP, VERSION, PLURAL)
def pools_by_secret(
    namespace: str, name: str, spec: Mapping[str, Any], **_: Any
) -> dict[tuple[str, str], str]:
    return {(namespace, secret): name for secret in referenced_secrets(spec)}


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec")
def pool_changed(body: kopf.Body, memo: kopf.Memo, logger: logging.Logger, **_: Any) -> None:
    reconcile(memo, body, logger)


@kopf.on.event("", "v1", "secrets")
def secret_changed(
    type: str | None,
    namespace: str,
    name: str,
    pools_by_secret: kopf.Index[tuple[str, str], str],
    memo: kopf.Memo,
    logger: logging.Logger,
    **_: Any,
) -> None:
    if type is None:  # the initial listing; every pool is rendered by its resume handler anyway
        return
    for pool_name in sorted(set(pools_by_secret.get((namespace, name), []))):
        pool = memo.kube.get_pool(namespace, pool_name)
        if pool is not None:
            logger.info("Secret %s %s: re-rendering O1Pool %s", name, type.lower(), pool_name)
            reconcile(memo, pool, logger)


@kopf.timer(GROUP, VERSION, PLURAL, interval=RESYNC_S, initial_delay=RESYNC_S)
def pool_resync(body: kopf.Body, memo: kopf.Memo, logger: logging.Logger, **_: Any) -> None:
    """Re-render every ``RESYNC_S`` seconds: repairs edits to the owned ConfigMap and Secret, and catches
    up on a Secret change whose event handler failed (kopf does not retry event handlers)."""
    reconcile(memo, body, logger)
