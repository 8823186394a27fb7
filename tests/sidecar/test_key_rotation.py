"""A key rotated in its Secret reaches a running sidecar: the kubelet swaps the mounted files, the
sidecar reads the new value and uses it, without a restart (keyfiles.py)."""

from __future__ import annotations

import logging
from pathlib import Path

import openai
import pytest

from o1sidecar.app import start_sidecar
from o1sidecar.config import SidecarConfig
from o1sidecar.keyfiles import KeyFiles
from o1sidecar.upstream import AccountRoute, UpstreamKey
from tests.polling import until
from tests.sidecar.conftest import KEYS, EmulatorHandle, sidecar_config_dict
from tests.sidecar.volumes import MountedVolume

REVOKED = "revoked-value-of-the-rotation-test"
VALID = KEYS["acct-a"][0]


def config_with_file_key(emulator: EmulatorHandle, path: Path) -> SidecarConfig:
    raw = sidecar_config_dict(emulator)
    raw["accounts"][0]["keys"] = [{"name": "a1", "file": str(path)}]
    raw["retry"] = {"max_attempts": 1, "backoff_base_s": 0.01}
    return SidecarConfig.from_dict(raw)


async def test_a_rotated_key_is_used_without_a_restart(
    emulator: EmulatorHandle, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    volume = MountedVolume(tmp_path)
    volume.write(a1=REVOKED)
    handle = await start_sidecar(config_with_file_key(emulator, tmp_path / "a1"))
    try:
        client = openai.AsyncOpenAI(base_url=handle.url, api_key="x", max_retries=0)
        ask = {"model": "o1", "messages": [{"role": "user", "content": "hi"}]}
        with pytest.raises(openai.APIStatusError):
            await client.chat.completions.create(**ask)  # type: ignore[call-overload]
        assert emulator.stats()["totals"]["401"] == 1
        assert handle.proxy.routes["acct-a"].in_quarantine() == ["a1"]

        volume.write(a1=VALID + "\n")  # the Secret was updated; the kubelet swapped the files

        def renewed() -> bool:
            value = handle.proxy.metrics.registry.get_sample_value(
                "o1_api_key_renewals_total", {"key": "acct-a/a1"}
            )
            return value == 1.0

        await until(renewed, "the sidecar read the new key", timeout_s=30)
        assert handle.proxy.routes["acct-a"].in_quarantine() == []  # the refusal was the old value's
        answer = await client.chat.completions.create(**ask)  # type: ignore[call-overload]
        assert answer.choices[0].message.content
        keys = emulator.stats()["accounts"]["acct-a"]["keys"]
        assert keys["a1"]["admitted"] == 1 and emulator.stats()["totals"]["401"] == 1
    finally:
        await handle.close()
    logged = caplog.text
    assert "acct-a/a1" in logged and REVOKED not in logged and VALID not in logged


def route(*names: str) -> AccountRoute:
    from o1sidecar.config import Account

    account = Account.model_validate(
        {
            "name": "acct",
            "base_url": "http://127.0.0.1:1",
            "keys": [{"name": n, "env": "UNUSED"} for n in names],
            "tier": 1,
        }
    )
    return AccountRoute(account, [UpstreamKey("acct", n, f"sk-{n}-start") for n in names])


def key_files(tmp_path: Path, accounts_keys: list[dict[str, str]], r: AccountRoute) -> KeyFiles:
    config = SidecarConfig.from_dict(
        {
            "pool": {"name": "p", "namespace": "n"},
            "accounts": [
                {"name": "acct", "base_url": "http://127.0.0.1:1", "keys": accounts_keys, "tier": 1}
            ],
        }
    )
    return KeyFiles(config, {"acct": r})


def test_only_changed_files_are_read_again_and_a_bad_one_keeps_the_value_in_use(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("O1T_ENV_KEY", "sk-e-start")
    (tmp_path / "f").write_text("sk-f-start")
    r = route("f", "e")
    watcher = key_files(
        tmp_path, [{"name": "f", "file": str(tmp_path / "f")}, {"name": "e", "env": "O1T_ENV_KEY"}], r
    )
    assert watcher.check() == []  # first look: the values already in use
    monkeypatch.setenv("O1T_ENV_KEY", "sk-e-other")
    (tmp_path / "f").write_text("sk-f-second")  # rewritten in place (not by a kubelet)
    assert watcher.check() == ["acct/f"]
    assert [k.value for k in r.keys] == ["sk-f-second", "sk-e-start"]  # the environment is read once
    assert watcher.check() == []  # unchanged since
    (tmp_path / "f").write_text("")
    assert watcher.check() == [] and r.keys[0].value == "sk-f-second"
    assert "is empty; calls keep using the value read before" in caplog.text
    (tmp_path / "f").unlink()
    assert watcher.check() == [] and r.keys[0].value == "sk-f-second"
    assert "cannot read" in caplog.text and "sk-f-second" not in caplog.text


def test_rekey_lifts_the_quarantine_of_that_key_only() -> None:
    r = route("a", "b")
    for key in list(r.keys):
        r.refused(key)
    assert r.rekey("a", "sk-a-start") is False and r.in_quarantine() == ["a", "b"]  # same value
    assert r.rekey("a", "sk-a-new") is True and r.in_quarantine() == ["b"]
    assert r.keys[0].value == "sk-a-new" and r.keys[0].label == "acct/a"
    with pytest.raises(KeyError):
        r.rekey("missing", "x")
