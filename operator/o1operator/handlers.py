"""kopf handlers: thin glue from watch events to :func:`o1operator.reconcile.reconcile_pool`.

Pools are (re)rendered when created, changed, or when the operator starts; a Secret event re-renders
every pool that references that Secret (found through the ``pools_by_secret`` index). Every pool is
also re-rendered every ``O1POOL_RESYNC_SECONDS`` (300 by default) by an operator-wide loop
(cli.resync_forever), not a kopf timer: kopf puts a finalizer on the objects of any timer, and then
deleting a pool (or its namespace) hangs while the operator is down. No handler needs a finalizer, so
none is added (a deleted pool's metrics are dropped on its watch event), and one that an earlier
version added is removed when the operator resumes a pool.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import kopf

from o1operator.kube import connection_info
from o1operator.objects import GROUP, PLURAL, VERSION
from o1operator.reconcile import reconcile_pool
from o1operator.render import referenced_secrets
from o1operator.settings import FINALIZER, configure


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
    ref = (meta["namespace"], meta["name"])
    memo.metrics.reconcile(
        *ref,
        lambda: reconcile_pool(
            memo.kube,
            pool,
            post_event,
            logger,
            memo.probes,
            redis=memo.observed.get(ref),
            allowed_hosts=memo.allowed_hosts,
            forecast=memo.forecasts.get(ref),
            images=memo.images,
        ),
    )


@kopf.index(GROUP, VERSION, PLURAL)
def pools_by_secret(
    namespace: str, name: str, spec: Mapping[str, Any], **_: Any
) -> dict[tuple[str, str], str]:
    return {(namespace, secret): name for secret in referenced_secrets(spec)}


@kopf.on.resume(GROUP, VERSION, PLURAL)
def pool_resumed(body: kopf.Body, memo: kopf.Memo, logger: logging.Logger, **_: Any) -> None:
    if memo.kube.remove_finalizer(body, FINALIZER):
        logger.info("removed the finalizer %s an earlier version added", FINALIZER)
    reconcile(memo, body, logger)


@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec")
def pool_changed(body: kopf.Body, memo: kopf.Memo, logger: logging.Logger, **_: Any) -> None:
    reconcile(memo, body, logger)


@kopf.on.event(GROUP, VERSION, PLURAL)  # (a watch event: needs no finalizer, unlike on.delete)
def pool_event(type: str | None, namespace: str, name: str, memo: kopf.Memo, **_: Any) -> None:
    if type == "DELETED":
        memo.probes.pop((namespace, name), None)  # (its Redis is no longer read)
        memo.metrics.forget(namespace, name)


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
