"""The chart's Grafana dashboards (helm/o1pool/files/dashboards/*.json): the chart ships each as a
ConfigMap for Grafana's dashboard sidecar only when asked; each is a well-formed dashboard whose queries
promtool parses; and every metric and label their panels and template variables read is in a real
scrape: sidecars under load (answers, a cache hit, a queue wait, a queue timeout, upstream 429s,
upstream failures and a fallback; their spend and a client's budgets) and the operator's metrics after a
reconciliation."""

from __future__ import annotations

import asyncio
import copy
import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import yaml
from prometheus_client import generate_latest

from o1operator.metrics import OperatorMetrics
from tests.alerts.promql import TARGET_LABELS, Exposure, exposed, merged, names_and_labels
from tests.alerts.test_alerts import CHART, helm, promtool, rendered  # noqa: F401
from tests.conftest import RedisServer
from tests.sidecar.conftest import BIG, EMULATOR_CONFIG, EmulatorFactory, SidecarFactory

DASHBOARDS = sorted((CHART / "files" / "dashboards").glob("*.json"))
# Grafana's own variables, and a value for each of the dashboards' (their names are the labels).
BUILTINS = {"__rate_interval": "1m", "__interval": "30s", "__range": "1h"}
VALUES = {"namespace": "tests", "pool": "test", "account": "acct-a"}
VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\[\[(\w+)\]\]|\$(\w+)")
LABEL_VALUES = re.compile(r"^\s*label_values\((.+),\s*([a-zA-Z_]\w*)\s*\)\s*$", re.DOTALL)


def load(path: Path) -> dict[str, Any]:
    board: dict[str, Any] = json.loads(path.read_text())
    return board


def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, those inside (collapsed) rows too."""
    for panel in items:
        yield panel
        yield from panels(panel.get("panels", []))


def substitute(text: str, values: dict[str, str]) -> str:
    """``text`` with each ``$var``, ``${var}``, ``${var:format}`` and ``[[var]]`` replaced; unknown ones
    are left as they are (and fail the checks below)."""

    def value(match: re.Match[str]) -> str:
        name = next(group for group in match.groups() if group)
        return values.get(name, match.group(0))

    return VARIABLE.sub(value, text)


def queries(board: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(where, PromQL, legend) for every panel target and query variable, the variables replaced. A
    variable's ``label_values(selector, label)`` becomes ``group by (label) (selector)``: the same
    metric and labels, in PromQL."""
    values = BUILTINS | VALUES
    out = []
    for panel in panels(board["panels"]):
        for target in panel.get("targets", []):
            where = f"{board['uid']}: panel {panel['title']!r} {target['refId']}"
            out.append((where, substitute(target["expr"], values), target.get("legendFormat", "")))
    for variable in board["templating"]["list"]:
        if variable["type"] != "query":
            continue
        query = variable["query"]
        query = query["query"] if isinstance(query, dict) else query
        found = LABEL_VALUES.match(substitute(query, values))
        assert found, f"{board['uid']}: variable {variable['name']}: not label_values(metric, label): {query}"
        out.append(
            (f"{board['uid']}: variable {variable['name']}", f"group by ({found[2]}) ({found[1]})", "")
        )
    return out


def unresolved(board: dict[str, Any], sidecar: Exposure, operator: Exposure) -> list[str]:
    """What in the dashboard's queries no scrape has: a metric name, a label of those metrics, a label
    a legend shows that the query does not keep, a variable left unreplaced."""
    problems = []
    for where, expr, legend in queries(board):
        if "$" in expr or "[[" in expr:
            problems.append(f"{where}: an unknown variable in {expr}")
        metrics, labels = names_and_labels(expr)
        if not metrics:
            problems.append(f"{where}: reads no o1pool metric: {expr}")
        seen = set(TARGET_LABELS)
        for metric in sorted(metrics):
            names, samples = operator if metric.startswith("o1_operator_") else sidecar
            if metric not in names:
                problems.append(f"{where}: {metric} is not exported")
            elif not any(name.startswith(metric) for name in samples):  # (a labelled family, no child yet)
                problems.append(f"{where}: {metric} has no series in the scrape")
            seen |= samples.get(metric, set())
        for label in sorted(labels - seen):
            problems.append(f"{where}: no series of {sorted(metrics)} has the label {label}")
        kept = {
            label.strip() for group in re.findall(r"\bby\s*\(([^)]*)\)", expr) for label in group.split(",")
        }
        for label in sorted(set(re.findall(r"\{\{\s*(\w+)\s*\}\}", legend)) - kept):
            problems.append(f"{where}: the legend shows {label}, which the query does not keep")
    return problems


def test_every_dashboard_is_well_formed_with_a_query_in_every_panel() -> None:
    assert [p.name for p in DASHBOARDS] == ["o1pool-accounts.json", "o1pool-pools.json"]
    uids = set()
    for path in DASHBOARDS:
        board = load(path)
        uids.add(board["uid"])
        assert board["title"] and board["schemaVersion"] >= 36 and "o1pool" in board["tags"], path.name
        variables = {v["name"]: v for v in board["templating"]["list"]}
        assert (variables["datasource"]["type"], variables["datasource"]["query"]) == (
            "datasource",
            "prometheus",
        )
        assert {"namespace", "pool"} <= set(variables), path.name
        ids = [panel["id"] for panel in panels(board["panels"])]
        assert len(ids) == len(set(ids)), f"{path.name}: panel ids repeat"
        cells: set[tuple[int, int]] = set()
        for panel in panels(board["panels"]):
            pos = panel["gridPos"]
            area = {
                (x, y)
                for x in range(pos["x"], pos["x"] + pos["w"])
                for y in range(pos["y"], pos["y"] + pos["h"])
            }
            assert pos["x"] + pos["w"] <= 24 and not area & cells, f"{path.name}: {panel['title']} overlaps"
            cells |= area
            if panel["type"] == "row":  # a heading of the layout, no query of its own
                continue
            assert panel["targets"], f"{path.name}: {panel['title']} has no query"
            for target in [panel, *panel["targets"]]:
                assert target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
            assert all(t["expr"].strip() for t in panel["targets"]), panel["title"]
            assert len({t["refId"] for t in panel["targets"]}) == len(panel["targets"]), panel["title"]
    assert len(uids) == len(DASHBOARDS)


def test_every_query_of_the_dashboards_is_promql_promtool_parses(promtool: Path, tmp_path: Path) -> None:  # noqa: F811
    """Each query as a recording rule: ``promtool check rules`` parses them with Prometheus' parser."""
    expressions = [(where, expr) for path in DASHBOARDS for where, expr, _ in queries(load(path))]
    rules = [
        {"record": f"o1pool_dashboard_query_{i}", "expr": expr} for i, (_, expr) in enumerate(expressions)
    ]
    rules_file = tmp_path / "queries.yaml"
    rules_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    result = subprocess.run(
        [str(promtool), "check", "rules", str(rules_file)], capture_output=True, text=True
    )
    named = "\n".join(
        f"{rule['record']}: {where}" for rule, (where, _) in zip(rules, expressions, strict=True)
    )
    assert result.returncode == 0 and f"SUCCESS: {len(rules)} rules found" in result.stdout, (
        result.stdout + result.stderr + named
    )


def test_the_chart_ships_the_dashboards_as_configmaps_only_when_asked(helm: Path) -> None:  # noqa: F811
    def dashboards(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
        maps = [d for d in docs if d["kind"] == "ConfigMap" and set(d["data"]) & {p.name for p in DASHBOARDS}]
        return {name: d for d in maps for name in d["data"]}

    assert not dashboards(rendered(helm))  # off by default
    shipped = dashboards(rendered(helm, "--set", "monitoring.dashboards.enabled=true"))  # no CRD needed
    assert set(shipped) == {p.name for p in DASHBOARDS}
    for path in DASHBOARDS:
        config_map = shipped[path.name]
        assert list(config_map["data"]) == [path.name]  # one dashboard each
        assert config_map["data"][path.name] == path.read_text().rstrip("\n")
        assert json.loads(config_map["data"][path.name]) == load(path)
        assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert config_map["metadata"]["namespace"] == "o1pool-system"
        assert "annotations" not in config_map["metadata"]
    assert len({d["metadata"]["name"] for d in shipped.values()}) == len(DASHBOARDS)
    custom = (
        "monitoring.dashboards.enabled=true",
        "monitoring.dashboards.label=example.com/dashboard",
        "monitoring.dashboards.labelValue=o1pool",
        "monitoring.dashboards.annotations.grafana_folder=o1pool",
        "monitoring.dashboards.namespace=monitoring",
    )
    args = [arg for value in custom for arg in ("--set", value)]
    for config_map in dashboards(rendered(helm, *args)).values():
        metadata = config_map["metadata"]
        assert metadata["labels"]["example.com/dashboard"] == "o1pool"
        assert "grafana_dashboard" not in metadata["labels"]
        assert metadata["annotations"] == {"grafana_folder": "o1pool"}
        assert metadata["namespace"] == "monitoring"


async def scrape(url: str) -> Exposure:
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        return exposed(await resp.text())


async def test_every_metric_and_label_the_dashboards_read_is_in_a_real_scrape(
    make_emulator: EmulatorFactory, make_sidecar: SidecarFactory, redis_server: RedisServer
) -> None:
    """Two sidecars sharing Redis and two accounts under load: acct-a's real gpt-4o limit is 2 RPM where
    the sidecars believe 10,000, and the upstream sends no limit headers (upstream 429s); o1-mini is
    paced at 60 RPM an account (queue waits, a timeout) with a daily cap (requests left); o1 fails on
    every account for a while (upstream failures, a fallback to o1-mini). The sidecars' pod is a client
    with a dollar and a token budget (no match: every workload), far from spent; the answers' usage at
    the shipped prices is their spend, the cache hit's what it saved. The operator's metrics: its
    registry after a reconciliation that published a prediction and a count of the pool's sidecars (its
    process serves the same registry: tests/operator/)."""
    accounts = copy.deepcopy(EMULATOR_CONFIG["accounts"])
    accounts[0]["models"]["gpt-4o"] = {"rpm": 2, "tpm": 50_000_000}
    upstream = await make_emulator(accounts=accounts)
    paced = {"rpm": 60, "tpm": 50_000_000, "daily_requests": 1000}
    config: dict[str, Any] = {
        "accounts": ("acct-a", "acct-b"),
        "upstream": upstream,
        "limits": {"o1": BIG, "o1-mini": paced, "gpt-4o": BIG},
        "redis": {"url": redis_server.url},
        "cache": {"enabled": True, "l1_entries": 0},  # hits come from L2 (Redis)
        "fallback": {"chains": {"o1": ["o1-mini"]}},
        "clients": [
            {"name": "all", "match": {}, "budgets": {"daily_usd": 1000, "monthly_tokens": 1_000_000_000}}
        ],
    }
    handles = [await make_sidecar(**config) for _ in range(2)]
    clients = [openai.AsyncOpenAI(base_url=h.url, api_key="x", max_retries=0) for h in handles]

    async def ask(i: int, model: str, content: str, **headers: str) -> int:
        messages = [{"role": "user", "content": content}]
        try:
            raw = await clients[i % 2].chat.completions.with_raw_response.create(
                model=model,
                messages=messages,  # type: ignore[arg-type]
                extra_headers={"x-o1pool-priority": str(2 + 3 * (i % 3)), **headers},
            )
        except openai.APIStatusError as exc:
            return exc.status_code
        return raw.status_code

    for i in range(2):  # an answer, then the same from L2 through the other sidecar
        assert await ask(i, "o1", "Hello?") == 200
    upstream.set_faults([{"kind": "no_headers", "model": "gpt-4o"}])  # the sidecars cannot see the limit
    burst = [ask(i, "gpt-4o", f"gpt-4o {i}") for i in range(10)]  # more than acct-a's 2 RPM at once
    burst += [ask(i, "o1-mini", f"o1-mini {i}") for i in range(6)]  # paced: they wait

    async def late() -> int:  # low priority behind the burst's o1-mini requests: waits past its deadline
        await asyncio.sleep(0.3)
        return await ask(0, "o1-mini", "late", **{"x-o1pool-deadline-ms": "200"})

    *statuses, late_status = await asyncio.gather(*burst, late())
    assert late_status == 429 and statuses.count(200) >= len(burst) - 2, (statuses, late_status)
    upstream.set_faults([{"kind": "error_5xx", "model": "o1"}])
    assert await ask(0, "o1", "a fallback") == 200  # three attempts on o1, then o1-mini
    upstream.set_faults([])
    sidecar = merged(*[await scrape(h.metrics_url) for h in handles])
    operator_metrics = OperatorMetrics()
    prediction = {"load": "low", "tokensPerHour": 40_000, "upperTokensPerHour": 52_000}
    status = {"conditions": [{"type": "Ready", "status": "True"}], "keys": "3/3", "prediction": prediction}
    operator_metrics.reconcile("tests", "test", lambda: status)
    operator_metrics.counted("tests", "test", len(handles))
    operator = exposed(generate_latest(operator_metrics.registry).decode())

    for path in DASHBOARDS:
        board = load(path)
        assert not unresolved(board, sidecar, operator), unresolved(board, sidecar, operator)
        # The check can fail: a misspelt metric, a label no series has, a legend of a label dropped.
        broken = copy.deepcopy(board)
        target = next(p for p in panels(broken["panels"]) if p.get("targets"))["targets"][0]
        target["expr"] = target["expr"].replace("o1_api_", "o1_api_x_", 1).replace("pool=", "pol=")
        target["legendFormat"] = "{{pod}}"
        problems = " ".join(unresolved(broken, sidecar, operator))
        assert "o1_api_x_" in problems and "the label pol" in problems and "shows pod" in problems, problems
