"""Redis over TLS with an ACL user, against a real redis-server started with TLS only: the sidecars
share limits (and the cache) through it; a wrong CA is refused and the sidecar limits locally."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import openai
import pytest
import redis

from o1pool.procs import free_port
from tests.kube.pki import generate_pki
from tests.polling import until
from tests.sidecar.conftest import SidecarFactory

pytestmark = pytest.mark.redis
USER, PASSWORD = "o1pool-sidecar", "p@ss:w/rd"  # characters a URL must percent-encode


@dataclass(frozen=True)
class TlsRedis:
    port: int
    ca: Path
    other_ca: Path

    def url(self, password: str = PASSWORD) -> str:
        return f"rediss://{USER}:{quote(password, safe='')}@127.0.0.1:{self.port}/0"

    def admin(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, ssl=True, ssl_ca_certs=str(self.ca))


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[TlsRedis]:
    binary = shutil.which("redis-server")
    assert binary, "needs redis-server (apt-get install -y redis-server)"
    pki, other = generate_pki(tmp_path / "pki"), generate_pki(tmp_path / "other")
    port = free_port()
    proc = subprocess.Popen(
        [
            binary,
            "--port", "0",
            "--tls-port", str(port),
            "--bind", "127.0.0.1",
            "--tls-cert-file", str(pki.apiserver_serving.cert),  # IP SAN 127.0.0.1
            "--tls-key-file", str(pki.apiserver_serving.key),
            "--tls-ca-cert-file", str(pki.ca.cert),
            "--tls-auth-clients", "no",
            "--save", "", "--appendonly", "no", "--dir", str(tmp_path),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    server = TlsRedis(port, pki.ca.cert, other.ca.cert)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                admin = server.admin()
                admin.ping()
                break
            except (redis.ConnectionError, OSError):
                assert time.monotonic() < deadline and proc.poll() is None, (
                    "redis-server with TLS did not start"
                )
                time.sleep(0.05)
        admin.execute_command("ACL", "SETUSER", USER, "on", f">{PASSWORD}", "~*", "&*", "+@all")
        admin.execute_command("ACL", "SETUSER", "default", "off")  # only the ACL user may connect
        admin.close()
        yield server
    finally:
        proc.terminate()
        proc.wait(timeout=10)


async def test_sidecars_share_limits_over_tls_as_an_acl_user(
    make_sidecar: SidecarFactory, tls_redis: TlsRedis
) -> None:
    cfg = {"url": tls_redis.url(), "tls_ca_file": str(tls_redis.ca), "heartbeat_interval_s": 0.2}
    one, two = [await make_sidecar(redis=cfg) for _ in range(2)]
    for handle in (one, two):
        client = openai.AsyncOpenAI(base_url=handle.url, api_key="x", max_retries=0)
        await client.chat.completions.create(model="o1", messages=[{"role": "user", "content": "over TLS?"}])
        assert handle.proxy.limiter.state().mode == "shared"
    # Each counts the pool's live sidecars from their heartbeats, refreshed every heartbeat interval.
    await until(lambda: one.proxy.limiter.state().live_sidecars == 2, "sidecar one seeing both over TLS")


async def test_a_server_certificate_from_another_ca_is_refused(
    make_sidecar: SidecarFactory, tls_redis: TlsRedis, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = {"url": tls_redis.url(), "tls_ca_file": str(tls_redis.other_ca)}
    handle = await make_sidecar(redis=cfg)
    client = openai.AsyncOpenAI(base_url=handle.url, api_key="x", max_retries=0)
    await client.chat.completions.create(model="o1", messages=[{"role": "user", "content": "trusted?"}])
    assert handle.proxy.limiter.state().mode == "local"  # served, on a local share of the limits
    assert PASSWORD not in caplog.text and quote(PASSWORD, safe="") not in caplog.text


def test_a_ca_file_without_tls_is_a_config_error() -> None:
    from o1sidecar.config import ConfigError, SidecarConfig

    with pytest.raises(ConfigError, match="tls_ca_file is only used with a rediss:// url"):
        SidecarConfig.from_dict(
            {
                "pool": {"name": "p", "namespace": "n"},
                "accounts": [
                    {
                        "name": "a",
                        "base_url": "http://127.0.0.1:1",
                        "tier": 1,
                        "keys": [{"name": "k", "env": "K"}],
                    }
                ],
                "redis": {"url": "redis://127.0.0.1:6379/0", "tls_ca_file": "/etc/ca.pem"},
            }
        )
