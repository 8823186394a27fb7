"""``o1pool forecast-eval`` on its regular trace (seeded, deterministic): the model and the floor policy
keep meeting the targets the README reports, and the baselines stay where they were."""

from __future__ import annotations

from o1operator.forecast import SeasonalRatio
from o1operator.scaling import Capacity
from o1pool.forecast_eval import ORACLE, evaluate, report
from o1pool.traces import SPECS


def test_the_regular_trace_meets_the_forecast_and_scaling_targets() -> None:
    spec = next(s for s in SPECS if s.name == "regular")
    result = evaluate(spec, Capacity(300.0, max_replicas=50), startup_min=3)
    mapes = dict(result.mape)
    ours = mapes.pop(SeasonalRatio().name)
    assert mapes[ORACLE] < ours <= 0.10, report([result])
    assert all(ours < other for name, other in mapes.items() if name != ORACLE)
    assert result.predictive.under_min <= result.reactive.under_min / 3
    assert result.predictive.replica_hours <= 1.15 * result.reactive.replica_hours
