"""Every kopf setting the operator depends on, chosen in one place (see docs/operator.md)."""

from __future__ import annotations

import logging

import kopf

from o1operator.objects import GROUP

FINALIZER = f"{GROUP}/finalizer"


def configure(settings: kopf.OperatorSettings) -> None:
    # Status-based storage would be pruned by the structural schema (status has no room for kopf's
    # fields), so progress and the diff base live in annotations under the project's group.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    # No handler needs a finalizer (no delete handler, timer or daemon: ownerReferences clean up, so
    # deleting a pool never waits for the operator); an earlier version's timer added this one, which
    # the resume handler removes.
    settings.persistence.finalizer = FINALIZER
    # Handler logs at INFO and above become Kubernetes events on the object (never with key values).
    settings.posting.enabled = True
    settings.posting.level = logging.INFO
    # No runtime discovery of CRDs/namespaces: the chart installs the CRD before the operator starts,
    # and skipping it keeps RBAC free of cluster-wide CRD and namespace reads.
    settings.scanning.disabled = True
    # Re-list periodically so a silently stalled watch cannot hide changes for long.
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 10
    settings.execution.max_workers = 4
