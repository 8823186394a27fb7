"""Status and conditions computed from a Rendering (pure; clock injected)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from o1operator.prediction import Assessment
from o1operator.reconcile import get_events
from o1operator.render import render
from o1operator.status import RedisView, get_status
from o1sidecar.outages import ModelState
from o1sidecar.quarantine import RefusedKey
from tests.operator.conftest import REPO, fake_secrets, load_example

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
MULTI = REPO / "examples" / "o1pool-multi-account.yaml"


def conditions(status: dict) -> dict[str, dict]:
    return {c["type"]: c for c in status["conditions"]}


def test_all_keys_present() -> None:
    pool = load_example(MULTI)
    status = get_status(pool, render(pool, fake_secrets(pool["spec"])), T0)
    by_type = conditions(status)
    assert {t: c["status"] for t, c in by_type.items()} == {
        "Ready": "True",
        "KeysReady": "True",
        "ConfigRendered": "True",
        "ModelsAvailable": "Unknown",
        "RedisReachable": "Unknown",  # not read yet
        "Forecasting": "Unknown",
    }
    assert by_type["Ready"]["reason"] == "Serving"
    assert all(
        c["observedGeneration"] == 1 and c["lastTransitionTime"] == "2026-01-01T12:00:00Z"
        for c in status["conditions"]
    )
    assert (status["keysReady"], status["keysTotal"], status["keys"]) == (4, 4, "4/4")
    assert (status["accountsReady"], status["accountsTotal"]) == (3, 3)
    assert status["observedGeneration"] == 1
    assert status["configMap"] == "research-o1pool-config" and status["keySecret"] == "research-o1pool-keys"


def test_missing_secret_is_named_and_pool_stays_ready() -> None:
    pool = load_example(MULTI)
    secrets = fake_secrets(pool["spec"])
    del secrets["azure-openai"]
    by_type = conditions(get_status(pool, render(pool, secrets), T0))
    keys = by_type["KeysReady"]
    assert (keys["status"], keys["reason"]) == ("False", "SecretNotFound")
    assert "'azure-openai'" in keys["message"] and "1 of 4" in keys["message"]
    assert (by_type["Ready"]["status"], by_type["Ready"]["reason"]) == ("True", "DegradedKeys")
    for value in secrets["openai-keys"].values():
        assert value not in str(by_type)


def test_no_keys_is_not_ready() -> None:
    pool = load_example(MULTI)
    status = get_status(pool, render(pool, {}), T0)
    by_type = conditions(status)
    assert (by_type["Ready"]["status"], by_type["Ready"]["reason"]) == ("False", "NoUsableKeys")
    assert by_type["ConfigRendered"]["status"] == "False"
    assert by_type["KeysReady"]["reason"] == "SecretNotFound"
    assert "configHash" not in status


def test_transition_time_moves_only_when_status_changes() -> None:
    pool = load_example(MULTI)
    secrets = fake_secrets(pool["spec"])
    pool["status"] = get_status(pool, render(pool, secrets), T0)
    pool["metadata"]["generation"] = 2
    later = T0 + timedelta(minutes=5)
    del secrets["azure-openai"]
    by_type = conditions(get_status(pool, render(pool, secrets), later))
    assert by_type["Ready"]["lastTransitionTime"] == "2026-01-01T12:00:00Z"
    assert by_type["Ready"]["observedGeneration"] == 2
    assert by_type["KeysReady"]["lastTransitionTime"] == "2026-01-01T12:05:00Z"


def test_conditions_of_other_writers_are_kept() -> None:
    pool = load_example(MULTI)
    forecasting = {
        "type": "Forecasting",
        "status": "True",
        "reason": "Predicting",
        "message": "ok",
        "observedGeneration": 1,
        "lastTransitionTime": "2025-12-31T00:00:00Z",
    }
    pool["status"] = {"conditions": [forecasting]}
    by_type = conditions(get_status(pool, render(pool, fake_secrets(pool["spec"])), T0))
    assert by_type["Forecasting"] == forecasting


def test_a_refused_key_is_named_with_since_when_and_the_pool_serves_degraded() -> None:
    pool = load_example(MULTI)
    rendering = render(pool, fake_secrets(pool["spec"]))
    label = f"{rendering.keys[0].account}/{rendering.keys[0].name}"
    since = T0.timestamp() - 90
    refused = (RefusedKey(label, "0badc0de", 2, since, T0.timestamp() + 30),)
    status = get_status(pool, rendering, T0, RedisView(refused=refused))
    by_type = conditions(status)
    keys = by_type["KeysReady"]
    assert (keys["status"], keys["reason"]) == ("False", "KeysRefused")
    assert f"key {label} refused by the upstream since 2026-01-01T11:58:30Z (2 in a row" in keys["message"]
    assert "1 of 4 keys unusable" in keys["message"] and "next try 2026-01-01T12:00:30Z" in keys["message"]
    assert (by_type["Ready"]["status"], by_type["Ready"]["reason"]) == ("True", "DegradedKeys")
    assert "serving with 3 of 4 keys" in by_type["Ready"]["message"]
    assert status["refusedKeys"] == [
        {"key": label, "since": "2026-01-01T11:58:30Z", "refusals": 2, "nextTry": "2026-01-01T12:00:30Z"}
    ]
    assert "0badc0de" not in str(status)  # the fingerprint stays in Redis
    events = get_events(get_status(pool, rendering, T0), status)
    assert [(t, r) for t, r, _ in events] == [("Warning", "KeysRefused")]
    lifted = conditions(get_status({**pool, "status": status}, rendering, T0))["KeysReady"]
    assert (lifted["status"], lifted["reason"]) == ("True", "AllKeysPresent")


def test_models_down_and_ramping_are_reported_with_since_when_and_the_next_probe() -> None:
    pool = load_example(MULTI)
    rendering = render(pool, fake_secrets(pool["spec"]))
    t = T0.timestamp()
    down = (
        ("o1", ModelState("down", since=t - 120, probe_at=t + 20)),
        ("o1-mini", ModelState("ramp", since=t - 30)),
    )
    status = get_status(pool, rendering, T0, RedisView(outages=down))
    models = conditions(status)["ModelsAvailable"]
    assert (models["status"], models["reason"]) == ("False", "ModelsDown")
    assert "o1 failing on every account since 2026-01-01T11:58:00Z" in models["message"]
    assert "next at 2026-01-01T12:00:20Z" in models["message"]
    assert "o1-mini answering again since 2026-01-01T11:59:30Z, ramping back" in models["message"]
    assert [(t, r) for t, r, _ in get_events(get_status(pool, rendering, T0, RedisView()), status)] == [
        ("Warning", "ModelsDown")
    ]
    ramping = get_status({**pool, "status": status}, rendering, T0, RedisView(outages=down[1:]))
    assert conditions(ramping)["ModelsAvailable"]["reason"] == "Recovering"
    answering = get_status({**pool, "status": ramping}, rendering, T0, RedisView())
    assert conditions(answering)["ModelsAvailable"]["reason"] == "Answering"
    assert [(t, r) for t, r, _ in get_events(status, answering)] == [("Normal", "ModelsAnswering")]


def test_redis_reachability_is_a_condition_with_an_event_when_it_goes() -> None:
    pool = load_example(MULTI)
    rendering = render(pool, fake_secrets(pool["spec"]))
    fine = get_status(pool, rendering, T0, RedisView())
    reachable = conditions(fine)["RedisReachable"]
    assert (reachable["status"], reachable["reason"]) == ("True", "Reachable")
    error = "ConnectionError: Error 111 connecting"
    gone = get_status({**pool, "status": fine}, rendering, T0, RedisView(error=error))
    redis = conditions(gone)["RedisReachable"]
    assert (redis["status"], redis["reason"]) == ("False", "Unreachable")
    assert error in redis["message"]
    assert conditions(gone)["ModelsAvailable"]["status"] == "Unknown"  # outages cannot be read either
    assert ("Warning", "RedisUnreachable") in [(t, r) for t, r, _ in get_events(fine, gone)]
    basic = load_example(REPO / "examples" / "o1pool-basic.yaml")
    del basic["spec"]["redis"]
    alone = conditions(get_status(basic, render(basic, fake_secrets(basic["spec"])), T0))["RedisReachable"]
    assert (alone["status"], alone["reason"]) == ("Unknown", "NoRedis")


def test_the_keys_a_predicted_peak_needs_are_a_condition_with_an_event_when_short() -> None:
    pool = load_example(MULTI)  # 4 keys
    rendering = render(pool, fake_secrets(pool["spec"]))

    def forecast(keys: int, load: str) -> Assessment:
        peak = {
            "hour": "2026-01-01T14:00:00Z",
            "upperTokensPerHour": 180_000,
            "load": load,
            "suggestedKeys": keys,
        }
        return Assessment(True, "Forecasting", "", {"load": "low", "peak": peak})

    covered = get_status(pool, rendering, T0, RedisView(), forecast(3, "medium"))
    peak = conditions(covered)["PeakCovered"]
    assert (peak["status"], peak["reason"]) == ("True", "KeysCoverPeak")
    short = get_status({**pool, "status": covered}, rendering, T0, RedisView(), forecast(5, "high"))
    peak = conditions(short)["PeakCovered"]
    assert (peak["status"], peak["reason"]) == ("False", "PeakNeedsMoreKeys")
    assert peak["message"] == (
        "peak at 14:00 UTC (high load, up to 180,000 tokens) needs about 5 keys' worth of quota, pool has "
        "4 usable: add keys or accounts before then"
    )
    assert ("Warning", "PeakNeedsMoreKeys", peak["message"]) in get_events(covered, short)
    assert get_events(short, short) == []  # told once
    later = get_status({**pool, "status": short}, rendering, T0, RedisView(), forecast(6, "high"))
    assert get_events(short, later) == []  # the window slides, the peak moves: not news every hour
    none = get_status(pool, rendering, T0, RedisView(), Assessment(None, "InsufficientHistory", "", None))
    assert conditions(none)["PeakCovered"]["status"] == "Unknown"


def test_keys_of_reserve_accounts_cover_only_a_high_peak() -> None:
    pool = load_example(MULTI)  # 4 keys on 3 accounts
    pool["spec"]["accounts"][0]["reserve"] = True
    rendering = render(pool, fake_secrets(pool["spec"]))
    reserve = sum(1 for k in rendering.keys if k.account == pool["spec"]["accounts"][0]["name"])
    assert reserve >= 1

    def peak(load: str, keys: int) -> dict:
        p = {"hour": "2026-01-01T14:00:00Z", "upperTokensPerHour": 1, "load": load, "suggestedKeys": keys}
        status = get_status(
            pool, rendering, T0, RedisView(), Assessment(True, "Forecasting", "", {"peak": p})
        )
        return conditions(status)["PeakCovered"]

    assert peak("high", 4)["status"] == "True"  # a high peak: the reserve serves
    medium = peak("medium", 4)
    assert (
        medium["status"] == "False"
        and f"pool has {4 - reserve} usable outside reserve accounts" in medium["message"]
    )


def test_spend_is_left_to_the_redis_reader_and_removed_once_nothing_is_counted() -> None:
    """status.spend is written by the loop that reads the pool's Redis (sidecars.py); a reconciliation
    removes it (null, a merge patch) once nothing is counted: no clients, or no Redis."""
    clients = [{"name": "web", "match": {}, "budgets": {"dailyUsd": 5}}, {"name": "batch", "match": {}}]
    pool = load_example(REPO / "examples" / "o1pool-basic.yaml")
    pool["spec"]["clients"] = clients
    assert "spend" not in get_status(pool, render(pool, fake_secrets(pool["spec"])), T0)
    del pool["spec"]["clients"]
    assert get_status(pool, render(pool, fake_secrets(pool["spec"])), T0)["spend"] is None
    pool["spec"] |= {"clients": clients[1:]}
    del pool["spec"]["redis"]
    assert get_status(pool, render(pool, fake_secrets(pool["spec"])), T0)["spend"] is None
    assert "spend" not in get_status(pool, render(pool, {}), T0)  # not rendered: what was said stays
