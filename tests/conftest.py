"""Shared fixtures: real servers on free loopback ports.

A test that needs a binary skips outside CI with a message saying how to get it, and fails in CI
(CI=true), where .ci/run installs everything.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from typing import Any, NoReturn

import pytest

from o1pool.procs import RedisServer, free_port
from o1pool.rediscluster import LocalCluster
from tests.kube.fixtures import cluster, kube, kube_namespace  # noqa: F401

__all__ = ["IN_CI", "LocalCluster", "RedisServer", "free_port", "missing", "require_binary", "start_cluster"]

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def missing(message: str) -> NoReturn:
    """A tool the test needs is missing: in CI that fails the test (.ci/run provides every tool),
    elsewhere it skips with ``message`` (which says how to get it)."""
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


def require_binary(name: str, how: str) -> str:
    """Path of ``name``; in CI its absence fails the test, elsewhere it skips with ``how``."""
    path = shutil.which(name)
    if path:
        return path
    missing(f"{name} not found; {how}")


@pytest.fixture(scope="session")
def redis_server_session() -> Iterator[RedisServer]:
    binary = require_binary("redis-server", "install it with: apt-get install -y redis-server")
    server = RedisServer(binary=binary)
    server.start()
    yield server
    server.close()


@pytest.fixture
def redis_server(redis_server_session: RedisServer) -> RedisServer:
    """The session's redis-server, flushed; restarted first if a previous test stopped it."""
    if redis_server_session.proc is None or redis_server_session.proc.poll() is not None:
        redis_server_session.start()
    redis_server_session.flush()
    return redis_server_session


def start_cluster(primaries: int = 3, replicas: int = 0, **options: Any) -> LocalCluster:
    """A Redis Cluster of redis-server processes (o1pool/rediscluster.py: ``tls``, ``password``); the
    caller closes it."""
    binary = require_binary("redis-server", "install it with: apt-get install -y redis-server")
    cli = require_binary("redis-cli", "install it with: apt-get install -y redis-tools")
    return LocalCluster(binary, cli, primaries=primaries, replicas=replicas, **options).start()


@pytest.fixture(scope="session")
def redis_cluster_session() -> Iterator[LocalCluster]:
    started = start_cluster()
    yield started
    started.close()


@pytest.fixture
def redis_cluster(redis_cluster_session: LocalCluster) -> LocalCluster:
    """The session's three-primary Redis Cluster, flushed (data and scripts)."""
    redis_cluster_session.flush()
    return redis_cluster_session


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The upstream matrix first: it judges timing on two shared cores, so it runs before the control
    plane of the Kubernetes tests (which keeps running, and cleaning up namespaces, until the end)."""
    items.sort(key=lambda item: 0 if item.path.name == "test_matrix.py" else 1)
