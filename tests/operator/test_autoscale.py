"""Replica floors ahead of predicted load: the pure policy (injected clock), and the scaler's decisions
against an in-memory API (the real API server and controller-manager: test_operator_kube.py)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import pytest

from o1operator.autoscale import (
    ANNOTATION,
    Floor,
    Scaler,
    get_autoscaling_settings,
    hpa_change,
    stabilised,
    startup_s,
    wanted_floor,
    workload_change,
)
from o1operator.forecast import Forecast
from o1operator.prediction import Assessment
from o1operator.scaling import Capacity

H = 490_000  # an hour since the epoch
CAP = Capacity(per_replica_per_min=100.0, target_utilisation=0.8, min_replicas=1, max_replicas=20)
QUIET, PEAK = Forecast(H, 4_800.0, 6_000.0), Forecast(H + 1, 48_000.0, 60_000.0)  # 1 and 10 replicas


def test_the_next_hours_floor_applies_the_lead_before_it_and_not_earlier() -> None:
    lead = 7 * 60.0
    before = wanted_floor((QUIET, PEAK), 1.0, CAP, H * 3600 + 52 * 60, lead)  # 8 min before the hour
    assert before == Floor(1, H)
    at_lead = wanted_floor((QUIET, PEAK), 1.0, CAP, H * 3600 + 53 * 60, lead)
    assert at_lead == Floor(10, H + 1)
    # Ahead of a quieter hour the busy hour under way keeps its floor to its end.
    busy_now, quiet_next = Forecast(H, 48_000.0, 60_000.0), Forecast(H + 1, 4_800.0, 6_000.0)
    assert wanted_floor((busy_now, quiet_next), 1.0, CAP, H * 3600 + 59 * 60, lead) == Floor(10, H)


def test_a_lead_longer_than_an_hour_reaches_the_hours_after_the_next() -> None:
    quiet = Forecast(H + 1, 4_800.0, 6_000.0)
    later = Forecast(H + 2, 48_000.0, 60_000.0)
    t = H * 3600 + 30 * 60  # 90 min before H + 2
    assert wanted_floor((QUIET, quiet, later), 1.0, CAP, t, 89 * 60.0) == Floor(1, H)
    assert wanted_floor((QUIET, quiet, later), 1.0, CAP, t, 90 * 60.0) == Floor(10, H + 2)


def test_a_higher_floor_applies_at_once_a_lower_one_after_the_stabilisation_window() -> None:
    t = 1_000_000.0
    assert stabilised(None, Floor(3, H), t, 600) == Floor(3, H)
    assert stabilised(Floor(3, H), Floor(8, H + 1), t, 600) == Floor(8, H + 1)
    held = stabilised(Floor(8, H), Floor(2, H + 1), t, 600)
    assert held == Floor(8, H, lower_since=t)
    assert stabilised(held, Floor(2, H + 1), t + 599, 600) == Floor(8, H, lower_since=t)
    assert stabilised(held, Floor(2, H + 1), t + 600, 600) == Floor(2, H + 1)
    assert stabilised(held, Floor(9, H + 1), t + 10, 600) == Floor(9, H + 1)  # wanted higher: ends the wait


def test_start_up_is_the_slowest_ready_pods_creation_to_ready() -> None:
    def pod(created: str, ready: str | None, restarts: int = 0) -> dict[str, Any]:
        conditions = [{"type": "Ready", "status": "True", "lastTransitionTime": ready}] if ready else []
        status = {"conditions": conditions, "containerStatuses": [{"restartCount": restarts}]}
        return {"metadata": {"creationTimestamp": created}, "status": status}

    pods = [
        pod("2026-12-06T10:00:00Z", "2026-12-06T10:00:40Z"),
        pod("2026-12-06T10:01:00Z", "2026-12-06T10:02:30Z"),
    ]
    assert startup_s(pods) == 90.0
    flapped = pod("2026-12-06T08:00:00Z", "2026-12-06T10:00:00Z")  # Ready again two hours in
    restarted = pod("2026-12-06T10:00:00Z", "2026-12-06T10:04:00Z", restarts=1)
    assert startup_s([*pods, flapped, restarted]) == 90.0  # neither says how long a start-up takes
    assert startup_s([pod("2026-12-06T10:00:00Z", None)]) is None  # not ready: nothing measured
    assert startup_s([]) is None


def hpa(min_replicas: int, max_replicas: int = 10, note: Mapping[str, Any] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": "web"}
    if note is not None:
        meta["annotations"] = {ANNOTATION: json.dumps(note)}
    return {
        "metadata": meta,
        "spec": {
            "minReplicas": min_replicas,
            "maxReplicas": max_replicas,
            "scaleTargetRef": {"kind": "Deployment", "name": "web"},
        },
    }


def test_an_hpas_min_replicas_is_raised_to_the_floor_and_its_own_value_comes_back() -> None:
    raised = hpa_change(hpa(2), 6, "pool")
    assert (raised.reason, raised.wanted) == ("FloorRaised", 6)
    assert raised.patch == {
        "metadata": {"annotations": {ANNOTATION: '{"pool":"pool","minReplicas":2,"floor":6}'}},
        "spec": {"minReplicas": 6},
    }
    note = {"pool": "pool", "minReplicas": 2, "floor": 6}
    assert hpa_change(hpa(6, note=note), 6, "pool").patch is None  # in place: nothing to do
    lower = hpa_change(hpa(6, note=note), 4, "pool")
    assert (lower.reason, lower.patch["spec"]) == ("FloorLowered", {"minReplicas": 4})  # type: ignore[index]
    back = hpa_change(hpa(6, note=note), 1, "pool")  # below its own: its own, and the note goes
    assert back.patch == {"metadata": {"annotations": {ANNOTATION: None}}, "spec": {"minReplicas": 2}}
    assert hpa_change(hpa(6, note=note), None, "pool").patch == back.patch  # no forecast: the same
    assert hpa_change(hpa(2), None, "pool").patch is None


def test_an_hpas_max_and_its_owners_changes_win() -> None:
    assert hpa_change(hpa(2, max_replicas=5), 9, "pool").wanted == 5
    note = {"pool": "pool", "minReplicas": 2, "floor": 6}
    owner_set_3 = hpa_change(hpa(3, note=note), 6, "pool")  # the owner changed minReplicas since
    assert (
        owner_set_3.patch["metadata"]["annotations"][ANNOTATION]
        == '{"pool":"pool","minReplicas":3,"floor":6}'
    )  # type: ignore[index]
    other_pool = {"pool": "other", "minReplicas": 1, "floor": 4}
    assert hpa_change(hpa(4, note=other_pool), None, "pool").patch is None  # not this pool's to put back
    owner_back = hpa_change(hpa(2, note={"pool": "pool", "minReplicas": 2, "floor": 6}), None, "pool")
    assert owner_back.patch is not None and owner_back.reason == ""  # only the note goes: no event


def test_a_workload_without_an_hpa_is_raised_never_lowered() -> None:
    deployment = {"kind": "Deployment", "metadata": {"name": "web"}, "spec": {"replicas": 3}}
    up = workload_change(deployment, 5)
    assert (up.reason, up.patch, up.message) == (
        "FloorRaised",
        {"spec": {"replicas": 5}},
        "Deployment/web replicas 3 -> 5",
    )
    assert workload_change(deployment, 2).patch is None
    assert workload_change(deployment, None).patch is None


class FakeApi:
    """The API server in memory: objects, and every call that changed something."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.pool = {"metadata": {"namespace": "ns", "name": "pool"}, "spec": spec, "status": {}}
        self.hpas = [hpa(2)]
        self.workloads = {
            ("Deployment", "web"): {
                "kind": "Deployment",
                "metadata": {"name": "web"},
                "spec": {"replicas": 2},
            },
            ("Deployment", "worker"): {
                "kind": "Deployment",
                "metadata": {"name": "worker"},
                "spec": {"replicas": 1},
            },
        }
        self.events: list[tuple[str, str]] = []
        self.calls: list[tuple[str, Any]] = []

    def get_pool(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.pool

    def get_workload(self, namespace: str, kind: str, name: str) -> dict[str, Any] | None:
        return self.workloads.get((kind, name))

    def list_hpas(self, namespace: str) -> list[dict[str, Any]]:
        return json.loads(json.dumps(self.hpas))

    def list_pods(self, namespace: str, match_labels: Mapping[str, str]) -> list[dict[str, Any]]:
        return []

    def patch_hpa(self, namespace: str, name: str, patch: Mapping[str, Any]) -> None:
        self.calls.append(("hpa", patch["spec"]["minReplicas"]))
        h = self.hpas[0]
        h["spec"]["minReplicas"] = patch["spec"]["minReplicas"]
        note = patch["metadata"]["annotations"][ANNOTATION]
        h["metadata"]["annotations"] = {} if note is None else {ANNOTATION: note}

    def scale_workload(self, namespace: str, kind: str, name: str, replicas: int) -> None:
        self.calls.append((name, replicas))
        self.workloads[(kind, name)]["spec"]["replicas"] = replicas

    def post_event(self, pool: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        self.events.append((reason, message))

    def patch_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        self.pool["status"] |= status


def autoscaling(mode: str) -> dict[str, Any]:
    per = 100  # tokens per replica per minute: a 48,000-token hour asks for 10 replicas
    targets = [
        {"name": "web", "tokensPerReplicaPerMinute": per},
        {"name": "worker", "tokensPerReplicaPerMinute": per},
    ]
    return {"autoscaling": {"mode": mode, "stabilizationSeconds": 600, "leadSeconds": 60, "targets": targets}}


def forecast(*hours: Forecast) -> Assessment:
    return Assessment(True, "Forecasting", "", {"load": "high"}, hours, 1.0)


def test_scale_raises_floors_ahead_of_the_peak_and_puts_the_hpa_back_after() -> None:
    api = FakeApi(autoscaling("scale"))
    scaler = Scaler(api, interval_s=60.0)
    t = H * 3600 + 50 * 60  # lead: 60 s start-up (none measured) + 60 s + the 60 s interval = 3 min
    scaler.act(("ns", "pool"), forecast(QUIET, PEAK), t)
    assert api.calls == []  # the quiet hour's floor (1) is below both
    scaler.act(("ns", "pool"), forecast(QUIET, PEAK), H * 3600 + 57 * 60)  # 3 min before the peak
    assert api.calls == [("hpa", 10), ("worker", 10)]
    assert [r for r, _ in api.events] == ["FloorRaised", "FloorRaised"]
    scaler.act(("ns", "pool"), forecast(QUIET, PEAK), H * 3600 + 58 * 60)
    assert len(api.calls) == 2 and len(api.events) == 2  # in place: no call, no event
    report = api.pool["status"]["autoscaling"]
    assert [(t["via"], t["floor"], t["replicas"]) for t in report["targets"]] == [
        ("HorizontalPodAutoscaler/web", 10, 10),
        ("Deployment/worker", 10, 10),
    ]
    after = (Forecast(H + 2, 4_800.0, 6_000.0), Forecast(H + 3, 4_800.0, 6_000.0))
    scaler.act(("ns", "pool"), forecast(*after), (H + 2) * 3600 + 60)  # the peak is over
    assert len(api.calls) == 2  # held for the stabilisation window
    scaler.act(("ns", "pool"), forecast(*after), (H + 2) * 3600 + 60 + 600)
    assert api.calls[2:] == [("hpa", 2)]  # the HPA's own minReplicas; the worker is the owner's to lower
    assert (
        api.hpas[0]["metadata"]["annotations"] == {}
        and api.workloads[("Deployment", "worker")]["spec"]["replicas"] == 10
    )


def test_observe_changes_nothing_and_says_what_it_would_do_once() -> None:
    api = FakeApi(autoscaling("observe"))
    scaler = Scaler(api, interval_s=60.0)
    for _ in range(3):
        scaler.act(("ns", "pool"), forecast(PEAK, PEAK), (H + 1) * 3600)
    assert api.calls == []
    assert [r for r, _ in api.events] == ["WouldFloorRaised", "WouldFloorRaised"]
    hour = datetime.fromtimestamp((H + 1) * 3600, UTC).strftime("%Y-%m-%dT%H:00:00Z")
    assert (
        api.events[0][1] == f"observe: would set HorizontalPodAutoscaler/web minReplicas 2 -> 10 for {hour}"
    )
    assert api.pool["status"]["autoscaling"]["targets"][0]["floor"] == 10


def test_leaving_scale_or_losing_the_forecast_puts_the_hpa_back() -> None:
    api = FakeApi(autoscaling("scale"))
    scaler = Scaler(api, interval_s=60.0)
    scaler.act(("ns", "pool"), forecast(PEAK, PEAK), (H + 1) * 3600)
    assert api.hpas[0]["spec"]["minReplicas"] == 10
    none = Assessment(None, "RedisUnreachable", "cannot read", None)
    scaler.act(("ns", "pool"), none, (H + 1) * 3600 + 60)
    assert api.hpas[0]["spec"]["minReplicas"] == 10  # a blip: the floor holds for the window
    scaler.act(("ns", "pool"), none, (H + 1) * 3600 + 60 + 600)
    assert api.hpas[0]["spec"]["minReplicas"] == 2
    assert "RedisUnreachable" in api.pool["status"]["autoscaling"]["message"]

    scaler.act(("ns", "pool"), forecast(PEAK, PEAK), (H + 1) * 3600 + 2000)
    assert api.hpas[0]["spec"]["minReplicas"] == 10
    api.pool["spec"] = autoscaling("off")
    scaler.act(("ns", "pool"), forecast(PEAK, PEAK), (H + 1) * 3600 + 2060)
    assert api.hpas[0]["spec"]["minReplicas"] == 2 and api.pool["status"]["autoscaling"] is None


def test_a_missing_target_is_a_warning_not_a_failure() -> None:
    spec = autoscaling("scale")
    spec["autoscaling"]["targets"].append({"name": "gone", "tokensPerReplicaPerMinute": 5})
    api = FakeApi(spec)
    Scaler(api, interval_s=60.0).act(("ns", "pool"), forecast(PEAK, PEAK), (H + 1) * 3600)
    assert ("TargetMissing", "Deployment gone not found in ns") in api.events
    assert api.calls == [("hpa", 10), ("worker", 10)]


def test_settings_take_the_crds_defaults() -> None:
    s = get_autoscaling_settings(
        {"autoscaling": {"mode": "scale", "targets": [{"name": "a", "tokensPerReplicaPerMinute": 7}]}}
    )
    assert (s.min_replicas, s.max_replicas, s.lead_s, s.stabilization_s) == (1, 10, 120.0, 600.0)
    assert s.targets[0].kind == "Deployment" and s.targets[0].tokens_per_replica_per_min == 7.0
    assert get_autoscaling_settings({}).mode == "off"


@pytest.mark.parametrize("busy", [1.0, 1.5])
def test_the_busy_factor_sizes_the_floor(busy: float) -> None:
    assert wanted_floor((PEAK, PEAK), busy, CAP, (H + 1) * 3600, 0).value == (10 if busy == 1.0 else 15)


def test_a_pool_no_longer_forecast_puts_the_hpa_back_and_is_forgotten() -> None:
    api = FakeApi(autoscaling("scale"))
    scaler = Scaler(api, interval_s=60.0)
    scaler.act(("ns", "pool"), forecast(PEAK, PEAK), (H + 1) * 3600)
    assert api.hpas[0]["spec"]["minReplicas"] == 10
    scaler.release(("ns", "pool"))  # deleted, or its Redis removed
    assert api.hpas[0]["spec"]["minReplicas"] == 2 and api.hpas[0]["metadata"]["annotations"] == {}
    assert not scaler.floors and not scaler.reported and not scaler.told


def test_after_a_restart_the_floor_an_hpa_carries_is_the_one_in_place() -> None:
    api = FakeApi(autoscaling("scale"))
    Scaler(api, interval_s=60.0).act(("ns", "pool"), forecast(PEAK, PEAK), (H + 1) * 3600)
    restarted = Scaler(api, interval_s=60.0)  # nothing in memory
    none = Assessment(None, "InsufficientHistory", "", None)
    restarted.act(("ns", "pool"), none, (H + 1) * 3600 + 60)
    assert api.hpas[0]["spec"]["minReplicas"] == 10  # held for the stabilisation window
    restarted.act(("ns", "pool"), none, (H + 1) * 3600 + 660)
    assert api.hpas[0]["spec"]["minReplicas"] == 2


def test_an_api_failure_on_one_target_leaves_the_others_and_the_status() -> None:
    api = FakeApi(autoscaling("scale"))

    def broken(namespace: str, kind: str, name: str) -> dict[str, Any] | None:
        if name == "web":
            raise RuntimeError("500 Internal Server Error")
        return api.workloads.get((kind, name))

    api.get_workload = broken  # type: ignore[method-assign]
    Scaler(api, interval_s=60.0).act(("ns", "pool"), forecast(PEAK, PEAK), (H + 1) * 3600)
    assert api.calls == [("worker", 10)]
    rows = api.pool["status"]["autoscaling"]["targets"]
    assert rows[0]["message"] == "cannot read it: 500 Internal Server Error" and rows[1]["floor"] == 10
