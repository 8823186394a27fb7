"""Status and conditions computed from a Rendering (pure; clock injected)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from o1operator.render import render
from o1operator.status import get_status
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
