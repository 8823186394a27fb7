"""Replica floors ahead of predicted load (``spec.autoscaling``): the policy, pure, apart from its API glue.

For every target the floor is the replicas that a busy minute of the forecast hour needs
(scaling.replica_floor: the pool's forecast mean per minute x the learned busy factor, at 80% of
``tokensPerReplicaPerMinute`` per replica, within ``minReplicas``..``maxReplicas``). The floor of the
hour under way holds until a later hour's floor applies, ``lead`` before that hour begins: the
target's measured pod start-up (the slowest of its ready pods that never restarted, from creation to
Ready) plus ``leadSeconds`` plus the operator's forecast interval (a round may come that late). A
higher floor applies at once; a lower one only once it has been lower for ``stabilizationSeconds``
(after an operator restart the floor an HPA carries counts as the one in place).

**Never scales in because of a forecast.** A target with a HorizontalPodAutoscaler gets the floor as
the HPA's ``minReplicas`` (capped by its ``maxReplicas``); the HPA's own value is kept in the
annotation ``o1pool.io/replica-floor`` and put back when the floor falls to it, the mode leaves
``scale``, the target or the pool goes (or stops being forecast), or the forecast has been missing
for ``stabilizationSeconds`` (the HPA then scales in on its metrics). A change the owner makes to
``minReplicas`` meanwhile becomes the value kept. A target without an HPA gets its ``replicas`` raised
to the floor and never lowered (the owner scales in). ``observe`` plans the same, changes nothing but
putting back what ``scale`` raised, and tells. Every change (or, in ``observe``, every new plan) is an
Event on the pool, and the plan is ``status.autoscaling``. API errors are per target: one failing
target (or event) does not stop the others, and the next round tries again.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from o1operator.forecast import Forecast
from o1operator.prediction import Assessment, hour_text
from o1operator.scaling import Capacity, floor_hour, replica_floor

log = logging.getLogger("o1operator.autoscale")

ANNOTATION = "o1pool.io/replica-floor"
DEFAULT_STARTUP_S = 60.0  # a target without a ready pod to measure
MAX_STARTUP_S = 600.0  # a pod "Ready" later than this after its creation flapped: not a start-up


@dataclass(frozen=True)
class Target:
    kind: str  # Deployment or StatefulSet
    name: str
    tokens_per_replica_per_min: float


@dataclass(frozen=True)
class AutoscalingSettings:
    mode: str  # off, observe, scale
    min_replicas: int
    max_replicas: int
    lead_s: float
    stabilization_s: float
    targets: tuple[Target, ...]


def get_autoscaling_settings(spec: Mapping[str, Any]) -> AutoscalingSettings:
    """``spec.autoscaling`` with the CRD's defaults."""
    a = spec.get("autoscaling") or {}
    return AutoscalingSettings(
        mode=str(a.get("mode", "off")),
        min_replicas=int(a.get("minReplicas", 1)),
        max_replicas=int(a.get("maxReplicas", 10)),
        lead_s=float(a.get("leadSeconds", 120)),
        stabilization_s=float(a.get("stabilizationSeconds", 600)),
        targets=tuple(
            Target(
                str(t.get("kind", "Deployment")), str(t["name"]), float(t.get("tokensPerReplicaPerMinute", 0))
            )
            for t in a.get("targets") or []
        ),
    )


@dataclass(frozen=True)
class Floor:
    value: int
    hour: int  # the hour (since the epoch) it was computed for
    lower_since: float | None = None  # since when a lower floor has been wanted


def wanted_floor(ahead: Sequence[Forecast], busy: float, cap: Capacity, now_s: float, lead_s: float) -> Floor:
    """The floor at ``now_s`` from the forecasts of the hour under way and the hours after it
    (``ahead``): the highest of the hour under way's and of every later hour that begins within
    ``lead_s`` (a floor is never lowered ahead of time)."""
    floor = Floor(replica_floor(ahead[0], busy, cap), ahead[0].hour)
    reach = floor_hour(int(now_s // 60), math.ceil(lead_s / 60))
    for later in ahead[1:]:
        if later.hour <= reach:
            value = replica_floor(later, busy, cap)
            if value > floor.value:
                floor = Floor(value, later.hour)
    return floor


def stabilised(previous: Floor | None, wanted: Floor, now_s: float, window_s: float) -> Floor:
    """``wanted``, unless it is lower than ``previous`` for less than ``window_s`` so far."""
    if previous is None or wanted.value >= previous.value:
        return wanted
    since = previous.lower_since if previous.lower_since is not None else now_s
    if now_s - since >= window_s:
        return wanted
    return Floor(previous.value, previous.hour, since)


def startup_s(pods: Sequence[Mapping[str, Any]]) -> float | None:
    """How long the slowest of the ready ``pods`` that never restarted took from creation to Ready
    (None when there is none to measure; a pod Ready more than ``MAX_STARTUP_S`` after its creation
    became Ready again later, and says nothing about a start-up)."""
    took = []
    for pod in pods:
        status = pod.get("status") or {}
        if any(c.get("restartCount", 0) for c in status.get("containerStatuses") or []):
            continue
        created = _time((pod.get("metadata") or {}).get("creationTimestamp"))
        ready = next(
            (
                c
                for c in status.get("conditions") or []
                if c.get("type") == "Ready" and c.get("status") == "True"
            ),
            None,
        )
        at = _time(ready.get("lastTransitionTime")) if ready else None
        if created is not None and at is not None and 0 <= at - created <= MAX_STARTUP_S:
            took.append(at - created)
    return max(took) if took else None


def _time(value: Any) -> float | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


@dataclass(frozen=True)
class Change:
    """What the floor means for one target: the object to patch and how, if at all."""

    kind: str  # HorizontalPodAutoscaler, or the workload's kind
    name: str
    replicas: int  # the HPA's minReplicas, or the workload's replicas, as found
    wanted: int  # ...and as the floor wants them
    patch: dict[str, Any] | None  # a merge patch of the HPA, or the workload's scale; None: nothing
    reason: str = ""  # FloorRaised / FloorLowered: worth an event ("" with a patch: bookkeeping only)
    message: str = ""

    @property
    def via(self) -> str:
        return f"{self.kind}/{self.name}"


def hpa_change(hpa: Mapping[str, Any], floor: int | None, pool: str) -> Change:
    """The HPA's ``minReplicas`` under ``floor`` (None: no floor; the HPA's own value goes back)."""
    meta, spec = hpa.get("metadata") or {}, hpa.get("spec") or {}
    name = str(meta.get("name"))
    current = int(spec.get("minReplicas", 1))
    kept = kept_floor(meta, pool)
    # The HPA's own minReplicas: as kept when o1pool raised it, unless the owner changed it since.
    own = kept["minReplicas"] if kept is not None and current == kept.get("floor") else current
    wanted = own if floor is None else max(own, min(int(spec.get("maxReplicas", own)), floor))
    via = f"HorizontalPodAutoscaler/{name}"
    if wanted > own:
        if current == wanted and kept is not None and kept.get("minReplicas") == own:
            return Change("HorizontalPodAutoscaler", name, current, wanted, None)
        note = json.dumps({"pool": pool, "minReplicas": own, "floor": wanted}, separators=(",", ":"))
        patch = {"metadata": {"annotations": {ANNOTATION: note}}, "spec": {"minReplicas": wanted}}
        reason = "" if wanted == current else "FloorRaised" if wanted > current else "FloorLowered"
        return Change("HorizontalPodAutoscaler", name, current, wanted, patch, reason,
                      f"{via} minReplicas {current} -> {wanted}")  # fmt: skip
    if kept is None:
        return Change("HorizontalPodAutoscaler", name, current, own, None)
    patch = {"metadata": {"annotations": {ANNOTATION: None}}, "spec": {"minReplicas": own}}
    if current == own:  # (the owner set it to its own value meanwhile: only the note goes)
        return Change("HorizontalPodAutoscaler", name, current, own, patch)
    return Change("HorizontalPodAutoscaler", name, current, own, patch, "FloorLowered",
                  f"{via} minReplicas {current} -> {own} (its own)")  # fmt: skip


def kept_floor(meta: Mapping[str, Any], pool: str) -> dict[str, Any] | None:
    """What ``pool`` noted on an HPA it raised (its own minReplicas and the floor set), if it did."""
    raw = (meta.get("annotations") or {}).get(ANNOTATION)
    if not raw:
        return None
    try:
        kept = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(kept, dict) or kept.get("pool") != pool or not isinstance(kept.get("minReplicas"), int):
        return None
    return kept


def workload_change(workload: Mapping[str, Any], floor: int | None) -> Change:
    """A workload without an HPA: its replicas raised to ``floor``, never lowered."""
    kind, name = str(workload.get("kind")), str((workload.get("metadata") or {}).get("name"))
    current = int((workload.get("spec") or {}).get("replicas", 1))
    if floor is None or floor <= current:
        return Change(kind, name, current, current, None)
    patch = {"spec": {"replicas": floor}}
    return Change(
        kind, name, current, floor, patch, "FloorRaised", f"{kind}/{name} replicas {current} -> {floor}"
    )


def hpa_for(hpas: Sequence[Mapping[str, Any]], target: Target) -> Mapping[str, Any] | None:
    """The HPA that scales ``target``, if any."""
    for hpa in hpas:
        ref = (hpa.get("spec") or {}).get("scaleTargetRef") or {}
        if ref.get("kind") == target.kind and ref.get("name") == target.name:
            return hpa
    return None


class ScaleApi(Protocol):
    """The API calls the scaler makes (o1operator.kube.Kube)."""

    def get_workload(self, namespace: str, kind: str, name: str) -> dict[str, Any] | None: ...
    def list_hpas(self, namespace: str) -> list[dict[str, Any]]: ...
    def list_pods(self, namespace: str, match_labels: Mapping[str, str]) -> list[dict[str, Any]]: ...
    def patch_hpa(self, namespace: str, name: str, patch: Mapping[str, Any]) -> None: ...
    def scale_workload(self, namespace: str, kind: str, name: str, replicas: int) -> None: ...
    def get_pool(self, namespace: str, name: str) -> dict[str, Any] | None: ...
    def post_event(self, pool: Mapping[str, Any], type_: str, reason: str, message: str) -> None: ...
    def patch_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None: ...


Ref = tuple[str, str]  # (namespace, pool)


@dataclass
class Scaler:
    """Acts on each forecast pool's assessment once per forecasting round, and puts back what it raised
    for pools no longer forecast (forecasting.forecast_forever). What it remembers (floors in place,
    the status last written, the events told) is per pool and forgotten with the pool."""

    api: ScaleApi
    interval_s: float  # the forecasting round: a floor may be applied this late
    floors: dict[Ref, dict[str, Floor]] = field(default_factory=dict)  # per target (kind/name)
    reported: dict[Ref, Any] = field(default_factory=dict)  # status.autoscaling as patched
    told: dict[Ref, dict[str, tuple[str, int]]] = field(default_factory=dict)  # events once per plan

    def act(self, ref: Ref, assessment: Assessment, now_s: float) -> None:
        namespace, name = ref
        pool = self.api.get_pool(namespace, name)
        if pool is None:
            self.release(ref)
            return
        settings = get_autoscaling_settings(pool.get("spec") or {})
        hpas = self.api.list_hpas(namespace)
        if settings.mode != "scale" and self._restore(pool, hpas, set()):
            hpas = self.api.list_hpas(namespace)  # (leaving scale: the HPAs as their owners set them)
        if settings.mode == "off":
            self._report(pool, None)
            self.floors.pop(ref, None)
            return
        usable = assessment.prediction is not None and len(assessment.ahead) >= 2
        rows, handled = [], set()
        for target in settings.targets:
            try:
                row = self._target(pool, settings, target, hpas, assessment if usable else None, now_s)
            except Exception as exc:  # the API failed for this target: the others go on
                log.warning(
                    "O1Pool %s/%s: autoscaling %s/%s: %s", *ref, target.kind, target.name, _api_error(exc)
                )
                row = {
                    "kind": target.kind,
                    "name": target.name,
                    "message": f"cannot read it: {_api_error(exc)}",
                }
            rows.append(row)
            handled.add(row.get("via", ""))
        self._restore(pool, hpas, handled)
        message = (
            "floors follow the forecast"
            if usable
            else f"no forecast ({assessment.reason}): floors go back to what the owners set once "
            f"stabilizationSeconds ({settings.stabilization_s:g}) pass"
        )
        self._report(pool, {"mode": settings.mode, "message": message, "targets": rows})

    def release(self, ref: Ref) -> None:
        """The pool is gone, or no longer forecast (no Redis): put back every HPA it raised and forget it."""
        namespace, name = ref
        if ref in self.floors or ref in self.reported:
            pool = {"metadata": {"namespace": namespace, "name": name}}
            self._restore(pool, self.api.list_hpas(namespace), set())
        for memory in (self.floors, self.reported, self.told):
            memory.pop(ref, None)

    def _target(
        self,
        pool: Mapping[str, Any],
        settings: AutoscalingSettings,
        target: Target,
        hpas: Sequence[Mapping[str, Any]],
        assessment: Assessment | None,
        now_s: float,
    ) -> dict[str, Any]:
        ref = (pool["metadata"]["namespace"], pool["metadata"]["name"])
        namespace, name = ref
        row: dict[str, Any] = {"kind": target.kind, "name": target.name}
        workload = self.api.get_workload(namespace, target.kind, target.name)
        if workload is None:
            row["message"] = f"{target.kind} {target.name} not found in {namespace}"
            self._tell(pool, f"{target.kind}/{target.name}", 0, "Warning", "TargetMissing", row["message"])
            return row
        if target.tokens_per_replica_per_min <= 0:  # (a pool stored before the CRD required it)
            row["message"] = "tokensPerReplicaPerMinute is not set: set it to size the floor"
            return row
        labels = ((workload.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
        measured = startup_s(self.api.list_pods(namespace, labels)) if labels else None
        lead = (measured if measured is not None else DEFAULT_STARTUP_S) + settings.lead_s + self.interval_s
        hpa = hpa_for(hpas, target)
        key = f"{target.kind}/{target.name}"
        previous = self.floors.get(ref, {}).get(key)
        if previous is None and hpa is not None:  # (an operator restart: the floor the HPA carries)
            kept = kept_floor(hpa.get("metadata") or {}, name)
            if kept is not None and isinstance(kept.get("floor"), int):
                previous = Floor(kept["floor"], -1)
        if assessment is not None:
            cap = Capacity(
                target.tokens_per_replica_per_min, 0.8, settings.min_replicas, settings.max_replicas
            )
            wanted = wanted_floor(assessment.ahead, assessment.busy, cap, now_s, lead)
        else:  # no forecast (yet, or for a while): no floor, once stabilised (a Redis blip keeps it)
            wanted = Floor(0, -1)
        floor = stabilised(previous, wanted, now_s, settings.stabilization_s)
        self.floors.setdefault(ref, {})[key] = floor
        if floor.value > 0:
            row |= {"floor": floor.value, "forHour": hour_text(floor.hour), "leadSeconds": round(lead)}
        if measured is not None:
            row["startupSeconds"] = round(measured)
        value = floor.value or None
        change = hpa_change(hpa, value, name) if hpa is not None else workload_change(workload, value)
        row |= {"via": change.via, "replicas": change.replicas}
        if change.patch is None:
            return row
        why = f" for {hour_text(floor.hour)}" if value and floor.hour >= 0 else ""
        if settings.mode == "observe":
            if change.reason:
                self._tell(pool, key, change.wanted, "Normal", f"Would{change.reason}",
                           f"observe: would set {change.message}{why}")  # fmt: skip
            return row
        try:
            if hpa is not None:
                self.api.patch_hpa(namespace, change.name, change.patch)
            else:
                self.api.scale_workload(namespace, target.kind, target.name, change.wanted)
        except Exception as exc:  # RBAC, a conflict, the target gone: say so, try again next round
            row["message"] = f"cannot set {change.message or change.via}: {_api_error(exc)}"
            self._tell(pool, key, change.wanted, "Warning", "ScalingFailed", row["message"])
            return row
        self.told.get(ref, {}).pop(key, None)  # (a later failure of the same kind is news again)
        if change.reason:
            self._event(pool, "Normal", change.reason, f"set {change.message}{why}")
        row["replicas"] = change.wanted
        return row

    def _restore(self, pool: Mapping[str, Any], hpas: Sequence[Mapping[str, Any]], handled: set[str]) -> bool:
        """Put back the own minReplicas of every HPA this pool raised that no current target covers;
        whether there was one."""
        namespace, name = pool["metadata"]["namespace"], pool["metadata"]["name"]
        restored = False
        for hpa in hpas:
            change = hpa_change(hpa, None, name)
            if change.via in handled or change.patch is None:
                continue
            try:
                self.api.patch_hpa(namespace, change.name, change.patch)
            except Exception as exc:
                log.warning(
                    "O1Pool %s/%s: cannot put back %s: %s", namespace, name, change.via, _api_error(exc)
                )
                continue
            restored = True
            if change.reason:
                self._event(
                    pool, "Normal", change.reason, f"set {change.message}: the pool no longer scales it"
                )
        return restored

    def _tell(self, pool: Mapping[str, Any], target: str, value: int, type_: str, reason: str,
              message: str) -> None:  # fmt: skip
        """An event, once per distinct plan or failure of a target (they repeat every round otherwise)."""
        told = self.told.setdefault((pool["metadata"]["namespace"], pool["metadata"]["name"]), {})
        if told.get(target) == (reason, value):
            return
        if self._event(pool, type_, reason, message):
            told[target] = (reason, value)

    def _event(self, pool: Mapping[str, Any], type_: str, reason: str, message: str) -> bool:
        """Best effort: a change already made stays made if its event cannot be posted."""
        try:
            self.api.post_event(pool, type_, reason, message)
        except Exception as exc:
            meta = pool["metadata"]
            log.warning(
                "O1Pool %s/%s: cannot post event %s: %s", meta["namespace"], meta["name"], reason, exc
            )
            return False
        return True

    def _report(self, pool: Mapping[str, Any], report: dict[str, Any] | None) -> None:
        ref = (pool["metadata"]["namespace"], pool["metadata"]["name"])
        if ref in self.reported and self.reported[ref] == report:
            return
        if report is None and (pool.get("status") or {}).get("autoscaling") is None:
            self.reported[ref] = None
            return
        self.api.patch_status(*ref, {"autoscaling": report})
        self.reported[ref] = report


def _api_error(exc: Exception) -> str:
    status, reason = getattr(exc, "status", None), getattr(exc, "reason", None)
    return f"{status} {reason}" if status else str(exc)
