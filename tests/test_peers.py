"""``o1pool bench --peers litellm``: the parts that need no LiteLLM (config, commands, tables)."""

from __future__ import annotations

import math
import stat
import sys
from pathlib import Path

import pytest
import yaml

from o1pool import bench, peers
from o1pool.loadgen import Outcome, Planned
from o1pool.procs import RedisServer
from o1pool.scenarios import DEFAULT_LAYOUT, MODEL, LatencyRow, Layout

LIMITS = {"rpm": 300, "tpm": 30_000_000}


def rendered(layout: Layout = DEFAULT_LAYOUT) -> dict[str, object]:
    config = peers.litellm_config("http://127.0.0.1:4321", layout, LIMITS, "127.0.0.1", 6390)
    parsed = yaml.safe_load(peers.render_config(config))
    assert isinstance(parsed, dict)
    return parsed


def test_config_has_one_deployment_per_account_with_its_limits() -> None:
    config = rendered()
    deployments = config["model_list"]
    assert isinstance(deployments, list) and len(deployments) == 2
    assert {d["model_name"] for d in deployments} == {MODEL}
    assert [d["model_info"]["id"] for d in deployments] == ["acct-a", "acct-b"]
    for d in deployments:
        params = d["litellm_params"]
        assert params["model"] == f"openai/{MODEL}"
        assert params["api_base"] == "http://127.0.0.1:4321/v1"
        assert (params["rpm"], params["tpm"]) == (300, 30_000_000)


def test_keys_are_environment_references_never_values() -> None:
    text = peers.render_config(
        peers.litellm_config("http://127.0.0.1:4321", DEFAULT_LAYOUT, LIMITS, "127.0.0.1", 6390)
    )
    for value in DEFAULT_LAYOUT.env().values():
        assert value not in text
    keys = [d["litellm_params"]["api_key"] for d in rendered()["model_list"]]  # type: ignore[attr-defined]
    assert keys == ["os.environ/O1POOL_KEY_ACCT_A_K1", "os.environ/O1POOL_KEY_ACCT_B_K1"]
    # and the process gets them, with the offline switches
    env = peers.launch_env(DEFAULT_LAYOUT, base={"PATH": "/bin", "HTTPS_PROXY": "http://proxy:3128"})
    assert env["O1POOL_KEY_ACCT_A_K1"] == DEFAULT_LAYOUT.key_value("acct-a", "k1")
    assert env["LITELLM_LOCAL_MODEL_COST_MAP"] == "True"
    assert env["LITELLM_OFFLINE_MODE"] == "true"
    assert env["LITELLM_LOG"] == "ERROR"
    assert "HTTPS_PROXY" not in env


def test_config_routes_by_usage_shared_through_redis_and_logs_nothing() -> None:
    config = rendered()
    router = config["router_settings"]
    assert router == {
        "routing_strategy": "usage-based-routing-v2",
        "redis_host": "127.0.0.1",
        "redis_port": 6390,
        "num_retries": peers.NUM_RETRIES,
        "timeout": peers.TIMEOUT_S,
    }
    settings = config["litellm_settings"]
    assert isinstance(settings, dict)
    assert settings["callbacks"] == settings["success_callback"] == settings["failure_callback"] == []
    assert settings["cache"] is False
    general = config["general_settings"]
    assert isinstance(general, dict)
    assert "database_url" not in general and "master_key" not in general
    assert general["disable_spend_logs"] is True


def test_a_multi_key_account_uses_its_first_key() -> None:
    layout = Layout(accounts=(("acct-a", ("k1", "k2")), ("acct-b", ("k1",))), pool="m")
    keys = [d["litellm_params"]["api_key"] for d in rendered(layout)["model_list"]]  # type: ignore[attr-defined]
    assert keys == ["os.environ/O1POOL_KEY_ACCT_A_K1", "os.environ/O1POOL_KEY_ACCT_B_K1"]


def test_install_and_launch_commands(tmp_path: Path) -> None:
    home = peers.peer_home(cache=tmp_path)
    assert home == tmp_path / "o1pool" / "peers" / "litellm-1.110.2"
    assert peers.venv_command(home, python="/usr/bin/python3") == [
        "/usr/bin/python3",
        "-m",
        "venv",
        str(home),
    ]
    command = peers.install_command(home)
    assert command[:4] == [str(home / "bin" / "python"), "-m", "pip", "install"]
    assert "litellm==1.110.2" in command
    assert not any(c.startswith("litellm[") or c.startswith("litellm-proxy==") for c in command)
    launch = peers.launch_command(home / "bin" / "litellm", tmp_path / "c.yaml", 4000)
    assert launch == [
        str(home / "bin" / "litellm"),
        "--config",
        str(tmp_path / "c.yaml"),
        "--host",
        "127.0.0.1",
        "--port",
        "4000",
        "--num_workers",
        "1",
    ]


def test_a_failed_install_names_the_command_and_pips_last_lines() -> None:
    with pytest.raises(peers.PeerInstallError) as caught:
        peers._run([sys.executable, "-c", "import sys; print('line 1'); sys.exit('no such version')"])
    assert "no such version" in str(caught.value) and sys.executable in str(caught.value)


def test_an_installed_venv_is_reused(tmp_path: Path) -> None:
    home = tmp_path / "venv"
    (home / "bin").mkdir(parents=True)
    (home / "bin" / "litellm").write_text("")
    (home / ".o1pool-installed").write_text("\n".join(peers.LITELLM_REQUIREMENTS))
    said: list[str] = []
    assert peers.ensure_litellm(home, log=said.append) == home / "bin" / "litellm"
    assert said == []


def test_the_config_file_is_private(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[list[str]] = []

    class Fake:
        pid = 1

        def __init__(self, args: list[str], **_: object) -> None:
            started.append(args)

    monkeypatch.setattr("o1pool.peers.subprocess.Popen", Fake)
    redis = RedisServer(binary="redis-server", port=6390, workdir=tmp_path)
    _, port = peers.start_litellm(
        Path("/x/litellm"), "http://127.0.0.1:1", DEFAULT_LAYOUT, LIMITS, redis, tmp_path
    )
    path = tmp_path / "litellm.yaml"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert started[0][started[0].index("--port") + 1] == str(port)


def outcome(priority: int, status: int, index: int = 0) -> Outcome:
    return Outcome(Planned(at_s=70.0, priority=priority, index=index), status, 0.01, 0.0)


def test_quota_table_from_a_hand_made_result() -> None:
    run = peers.QuotaRun(
        proxy="LiteLLM 1.110.2",
        instances=4,
        measure_s=60.0,
        capacity_calls=600.0,
        admitted=540,
        upstream_429s=60,
        outcomes=[outcome(8, 200), outcome(8, 200), outcome(5, 429), outcome(2, 200), outcome(2, 500)],
        cpu_s=[1.0, 2.0, 1.5, 0.5],
    )
    assert run.upstream_calls == 600
    assert run.utilisation == pytest.approx(0.9)
    assert run.by_priority(8) == (2, 0, 0)
    assert run.by_priority(5) == (0, 1, 0)
    assert run.by_priority(2) == (1, 0, 1)
    assert run.cpu_ms_per_request() == pytest.approx(1000.0)
    text = peers.quota_table([run])
    header, _, row = text.splitlines()
    assert "upstream 429s" in header and "p8 answered / refused / errors" in header
    assert "LiteLLM 1.110.2" in row and "90.0%" in row and "2 / 0 / 0" in row and "1 / 0 / 1" in row
    assert "1.0 2.0 1.5 0.5" in row


def test_latency_ratios_and_summary() -> None:
    def row(name: str, p: float, cpu_s: float) -> LatencyRow:
        return LatencyRow(name, [p] * 100, 0, cpu_s=cpu_s)

    rows = [
        row("direct", 0.002, 0.0),
        row("bare aiohttp proxy", 0.003, 0.1),
        row("o1pool sidecar", 0.004, 0.3),
        row("LiteLLM 1.110.2", 0.034, 3.0),
    ]
    cpu, p99 = peers.peer_ratios(rows, "LiteLLM 1.110.2")
    assert cpu == pytest.approx(10.0) and p99 == pytest.approx(16.0)
    assert peers.peer_summary(rows) == (
        "LiteLLM 1.110.2 / o1pool sidecar: CPU per call 10.0x, added p99 16.0x (target >= 15x each: not met)"
    )
    assert peers.peer_summary(rows[:3]) == ""
    assert math.isnan(
        peers.peer_ratios([rows[0], row("o1pool sidecar", 0.002, 0.0), rows[3]], "LiteLLM 1.110.2")[1]
    )


def test_bench_takes_the_peers_options(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = {}

    async def fake_run(args: object) -> int:
        seen["args"] = args
        return 0

    monkeypatch.setattr(bench, "run", fake_run)
    assert bench.main(["--only-peers", "--skip-peer-quota"]) == 0
    args = seen["args"]
    assert args.only_peers and args.skip_peer_quota and args.peers is None  # type: ignore[attr-defined]
    assert bench.main(["--peers", "litellm", "--skip-matrix"]) == 0
    assert seen["args"].peers == ["litellm"]  # type: ignore[attr-defined]
    with pytest.raises(SystemExit):
        bench.main(["--peers", "portkey"])


def test_only_peers_runs_the_three_rates_and_the_quota(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    class FakeRedis:
        proc = None

        def start(self) -> None: ...

        def close(self) -> None: ...

        def flush(self) -> None: ...

    async def fake_latency(settings: object, redis: object, extra: object = None) -> list[LatencyRow]:
        calls.append(f"latency {settings.rate_rps:g} {'with' if extra else 'without'} peer")  # type: ignore[attr-defined]
        return [LatencyRow(n, [0.001], 0, cpu_s=0.1) for n in ("direct", "bare", "o1pool sidecar", "LiteLLM")]

    async def fake_quota(*_: object, **__: object) -> list[peers.QuotaRun]:
        calls.append("quota")
        return []

    monkeypatch.setattr("o1pool.bench.RedisServer.find", classmethod(lambda cls: FakeRedis()))
    monkeypatch.setattr(bench, "run_latency", fake_latency)
    monkeypatch.setattr(peers, "ensure_litellm", lambda: Path("/x/litellm"))
    monkeypatch.setattr(peers, "run_peer_quota", fake_quota)
    for name in ("run_matrix", "run_cache_bench", "run_fairness", "run_queue_bench"):
        monkeypatch.setattr(bench, name, None)  # called: a TypeError
    assert bench.main(["--only-peers"]) == 0
    assert calls == [f"latency {r} with peer" for r in ("20", "100", "300")] + ["quota"]
    calls.clear()
    assert bench.main(["--only-peers", "--skip-latency"]) == 0
    assert calls == ["quota"]
    calls.clear()
    assert bench.main(["--only-peers", "--skip-peer-quota", "--peer-rate", "20"]) == 0
    assert calls == ["latency 20 with peer"]
