"""Config validation errors name the field; the CLI serves, prints its URL and explains bad input."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.error import HTTPError
from urllib.request import Request, urlopen

import openai
import pytest
import yaml

from o1emulator import EmulatorConfig, EmulatorConfigError, EmulatorThread, default_config

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "emulator.yaml"


def minimal(**account_models: Any) -> dict[str, Any]:
    return {
        "models": {"o1": {"reasoning": True}},
        "accounts": [
            {
                "name": "a",
                "keys": [{"name": "k", "key": "sk-test-123456"}],
                "models": account_models or {"o1": {"rpm": 1, "tpm": 100_000}},
            }
        ],
    }


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (
            lambda c: c.update(bogus=1),
            "<config>: bogus: unknown field; check the spelling against docs/emulator.md",
        ),
        (
            lambda c: c["accounts"][0]["models"]["o1"].update(rpm=0),
            "accounts.0.models.o1.rpm: Input should be greater",
        ),
        (lambda c: c["accounts"][0]["models"]["o1"].pop("tpm"), "set both rpm and tpm"),
        (
            lambda c: c["accounts"][0]["models"].update({"gpt-9": {"rpm": 1, "tpm": 1}}),
            "'gpt-9', not in 'models'",
        ),
        (lambda c: c.update(burst=0), "burst: Input should be greater than 0"),
        (lambda c: c.update(tokens={"charge": "min"}), "tokens.charge: Input should be 'max' or 'sum'"),
        (
            lambda c: c.update(faults=[{"kind": "error_5xx", "account": "zz"}]),
            "account 'zz' is not in 'accounts'",
        ),
        (lambda c: c.update(faults=[{"kind": "error_5xx", "probability": 2}]), "faults.0.probability"),
        (lambda c: c["models"]["o1"].update(output_tokens=[5, 2]), "output_tokens must be [low, high]"),
        (lambda c: c["accounts"].append(c["accounts"][0]), "account names must be unique"),
        (lambda c: c.update(deployments={"d": "nope"}), "deployments: 'd' names 'nope'"),
    ],
)
def test_bad_config_names_the_field(mutate: Any, expected: str) -> None:
    config = minimal()
    mutate(config)
    with pytest.raises(EmulatorConfigError) as caught:
        EmulatorConfig.from_dict(config)
    assert expected in str(caught.value)
    assert "sk-test-123456" not in str(caught.value)


def test_default_and_example_configs_are_valid() -> None:
    default = default_config()
    assert {a.name for a in default.accounts} == {"acct-a", "acct-b"}
    assert {"o1", "o1-mini", "gpt-4o"} <= set(default.models)
    example = EmulatorConfig.load(EXAMPLE)
    team_b = next(a for a in example.accounts if a.name == "team-b")
    limits = team_b.limits_for("o1")
    assert limits is not None and (limits.rpm, limits.concurrency) == (50, 5)  # tier 5 preset + override


def test_bad_yaml_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("models: [unclosed\n")
    with pytest.raises(EmulatorConfigError, match=r"bad\.yaml: not valid YAML"):
        EmulatorConfig.load(path)
    path.write_text("- a list\n")
    with pytest.raises(EmulatorConfigError, match="expected a mapping at the top level"):
        EmulatorConfig.load(path)
    with pytest.raises(EmulatorConfigError, match=r"missing\.yaml: cannot read"):
        EmulatorConfig.load(tmp_path / "missing.yaml")


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "o1pool.cli", "emulator", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


def test_cli_help_and_bad_config(tmp_path: Path) -> None:
    help_run = run_cli("--help")
    assert help_run.returncode == 0 and "--config" in help_run.stdout and "/admin/stats" in help_run.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("models: {o1: {}}\naccounts: []\n")
    result = run_cli("--config", str(bad))
    assert result.returncode == 2
    assert f"{bad}: accounts: List should have at least 1 item" in result.stderr
    result = run_cli("--burst", "-1", "--print-config")
    assert result.returncode == 2 and "command line: burst:" in result.stderr
    result = run_cli("--window", "90", "--print-config")
    assert result.returncode == 2 and "command line: limiter.window_s:" in result.stderr


def test_cli_flags_choose_the_algorithm_headers_and_estimate() -> None:
    result = run_cli(
        "--algorithm",
        "sliding_log",
        "--window",
        "10",
        "--no-rate-headers",
        "--estimate",
        "json_chars",
        "--print-config",
    )
    assert result.returncode == 0, result.stderr
    printed = yaml.safe_load(result.stdout)
    assert printed["limiter"] == {
        "algorithm": "sliding_log",
        "window_s": 10.0,
        "headers": False,
        "retry_after_s": None,
        "limit_scale": 1.0,
    }
    assert printed["tokens"]["estimate"] == "json_chars"


def test_cli_serves_on_a_free_port_and_prints_the_url() -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "o1pool.cli",
            "emulator",
            "--config",
            str(EXAMPLE),
            "--port",
            "0",
            "--latency-scale",
            "0",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line.startswith("o1pool emulator listening on http://127.0.0.1:")
        url = line.rsplit(" ", 1)[1]
        client = openai.OpenAI(base_url=url + "/v1", api_key="sk-emu-team-a-1", max_retries=0)
        completion = client.chat.completions.create(model="o1", messages=[{"role": "user", "content": "x"}])
        assert completion.id.startswith("chatcmpl-") and completion.created == 1_735_689_600  # seed: 1
        with urlopen(url + "/admin/stats", timeout=10) as response:
            stats = json.load(response)
        assert stats["accounts"]["team-a"]["models"]["o1"]["admitted"] == 1
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0


def test_azure_client() -> None:
    config = minimal()
    config["deployments"] = {"prod-o1": "o1"}
    with EmulatorThread(config) as emu:
        client = openai.AzureOpenAI(
            api_key="sk-test-123456", api_version="2024-10-21", azure_endpoint=emu.url, max_retries=0
        )
        completion = client.chat.completions.create(
            model="prod-o1", messages=[{"role": "user", "content": "x"}]
        )
        assert completion.model == "o1" and completion.choices[0].message.content
        with pytest.raises(openai.RateLimitError) as caught:  # 1 RPM
            client.chat.completions.create(model="prod-o1", messages=[{"role": "user", "content": "x"}])
        assert caught.value.response.headers["x-ratelimit-limit-requests"] == "1"
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model="missing", messages=[{"role": "user", "content": "x"}])
        request = Request(
            emu.url + "/openai/deployments/prod-o1/chat/completions",
            data=b"{}",
            headers={"api-key": "sk-test-123456"},
        )
        with pytest.raises(HTTPError) as refused:
            urlopen(request, timeout=10)
        assert refused.value.code == 400 and "api-version" in json.load(refused.value)["error"]["message"]


def test_real_time_refill() -> None:
    """Without an injected clock: 120 RPM refills one request every 0.5 s of wall time."""
    config = minimal(o1={"rpm": 120, "tpm": 10**7})
    with EmulatorThread(config) as emu:
        client = openai.OpenAI(base_url=emu.base_url, api_key="sk-test-123456", max_retries=0)
        messages = [{"role": "user", "content": "x"}]
        started = time.monotonic()
        refused: openai.RateLimitError | None = None
        admitted = 0
        while refused is None and admitted < 400:
            try:
                client.chat.completions.create(model="o1", messages=messages)  # type: ignore[arg-type]
                admitted += 1
            except openai.RateLimitError as exc:
                refused = exc
        elapsed = time.monotonic() - started
        assert refused is not None
        assert 120 <= admitted <= 120 + elapsed * 2 + 1  # the full bucket plus what refilled meanwhile
        wait_ms = int(refused.response.headers["retry-after-ms"])
        assert 0 < wait_ms <= 500
        time.sleep(wait_ms / 1000 + 0.05)
        client.chat.completions.create(model="o1", messages=messages)  # type: ignore[arg-type]
        assert emu.stats()["accounts"]["a"]["models"]["o1"]["admitted"] == admitted + 1
