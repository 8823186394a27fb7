"""Shared fixtures: real servers on free loopback ports.

A test that needs a binary skips outside CI with a message saying how to get it, and fails in CI
(CI=true), where .ci/run installs everything.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.kube.fixtures import kube, kube_namespace  # noqa: F401

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def require_binary(name: str, how: str) -> str:
    """Path of ``name``; in CI its absence fails the test, elsewhere it skips with ``how``."""
    path = shutil.which(name)
    if path:
        return path
    message = f"{name} not found; {how}"
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class RedisServer:
    """A redis-server process on 127.0.0.1 that a test may stop and start again."""

    binary: str
    port: int
    workdir: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc = None

    def flush(self) -> None:
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
            s.sendall(b"FLUSHALL\r\nSCRIPT FLUSH\r\n")
            s.recv(64)


@pytest.fixture(scope="session")
def redis_server_session() -> Iterator[RedisServer]:
    binary = require_binary("redis-server", "install it with: apt-get install -y redis-server")
    with tempfile.TemporaryDirectory(prefix="o1pool-redis-") as workdir:
        server = RedisServer(binary=binary, port=free_port(), workdir=Path(workdir))
        server.start()
        yield server
        server.stop()


@pytest.fixture
def redis_server(redis_server_session: RedisServer) -> RedisServer:
    """The session's redis-server, flushed; restarted first if a previous test stopped it."""
    if redis_server_session.proc is None or redis_server_session.proc.poll() is not None:
        redis_server_session.start()
    redis_server_session.flush()
    return redis_server_session
