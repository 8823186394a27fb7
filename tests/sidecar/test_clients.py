"""The pool's clients (o1sidecar/clients.py, spend.py): which client a sidecar serves, the priority
ceiling, and budgets held across sidecars through a real Redis. Pure rules first (ledger, budgets,
calendar), then two sidecars of one client on one redis-server, called with the openai SDK; "done"
is decided from state (the budget gauge, the spend HASH), never from time."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import aiohttp
import openai
import pytest
from redis.asyncio import Redis

from o1emulator.embedded import EmulatorHandle
from o1sidecar.clients import Clients
from o1sidecar.config import Budgets, ConfigError, SidecarConfig
from o1sidecar.errors import budget_exceeded
from o1sidecar.identity import Identity
from o1sidecar.limits.keys import PoolKeys
from o1sidecar.prices import PriceTable, TokenUse
from o1sidecar.spend import (
    BudgetSpent,
    ClientSpend,
    SpendLedger,
    Spent,
    budget_spent,
    budgets_left,
    month_period,
    next_month_s,
    read_spend,
)
from tests.conftest import RedisServer
from tests.polling import until
from tests.sidecar.conftest import SidecarFactory

WEB = {"O1POOL_NAMESPACE": "team-a", "O1POOL_WORKLOAD": "Deployment/web", "O1POOL_SERVICE_ACCOUNT": "web"}
BASE: dict[str, Any] = {"accounts": [{"name": "a", "tier": 5, "keys": [{"name": "k", "env": "X"}]}]}


# --- pure rules ---------------------------------------------------------------------------------


def test_a_sidecar_is_the_first_client_its_pod_matches() -> None:
    config = SidecarConfig.from_dict(
        BASE
        | {
            "clients": [
                {"name": "batch", "match": {"namespaces": ["team-a"], "workloads": ["Job/nightly"]}},
                {"name": "web", "match": {"namespaces": ["team-a"], "service_accounts": ["web"]}},
                {"name": "everyone", "match": {}},
            ]
        }
    )
    assert Clients(config, Identity.from_env(WEB)).names() == ["web"]
    nightly = Identity("team-a", "p", "default", "Job/nightly")
    assert Clients(config, nightly).names() == ["batch"]
    assert Clients(config, Identity("team-b", "p", "web", "Deployment/web")).names() == ["everyone"]
    assert Clients(SidecarConfig.from_dict(BASE), Identity.from_env(WEB)).own is None


def test_priority_ceiling() -> None:
    config = SidecarConfig.from_dict(BASE | {"clients": [{"name": "web", "match": {}, "max_priority": 5}]})
    client = Clients(config, Identity()).own
    assert [Clients.priority(client, p) for p in (0, 5, 6, 9)] == [0, 5, 5, 5]
    assert Clients.priority(None, 9) == 9


def test_config_refuses_clients_that_would_do_nothing() -> None:
    with pytest.raises(ConfigError, match=r"clients\[web\]\.on_budget applies once a budget is spent"):
        SidecarConfig.from_dict(BASE | {"clients": [{"name": "web", "match": {}, "on_budget": "downgrade"}]})
    with pytest.raises(ConfigError, match=r"budgets, which are counted .* through Redis: set redis\.url"):
        SidecarConfig.from_dict(
            BASE | {"clients": [{"name": "web", "match": {}, "budgets": {"daily_usd": 1}}]}
        )
    with pytest.raises(ConfigError, match="client names must be unique"):
        SidecarConfig.from_dict(
            BASE | {"clients": [{"name": "web", "match": {}}, {"name": "web", "match": {}}]}
        )


def test_ledger_counts_pending_and_known_spend_per_day_and_month() -> None:
    now = [datetime(2026, 12, 31, 23, 59, tzinfo=UTC).timestamp()]
    ledger = SpendLedger(lambda: now[0])
    ledger.add("web", 0.25, 100)
    ledger.add("web", 0.5, 50)
    assert ledger.spent("web") == ClientSpend(Spent(0.75, 150), Spent(0.75, 150))
    written = ledger.take()  # (what a flush sends)
    assert sum(m for m, _ in written.values()) == 2 * 750_000
    ledger.give_back(written)  # Redis was down: nothing is lost or counted twice
    assert ledger.spent("web") == ClientSpend(Spent(0.75, 150), Spent(0.75, 150))
    written = ledger.take()
    ledger.learned("d" + str(int(now[0] // 86_400)), "web", 2_000_000, 900)  # other sidecars spent too
    assert ledger.spent("web").today == Spent(2.0, 900)
    now[0] += 120  # a new day and a new month: nothing spent yet
    ledger.forget_before(now[0])
    assert ledger.spent("web") == ClientSpend(Spent(), Spent())
    assert month_period(now[0]) == "m202701"


def test_budgets_say_which_is_spent_and_when_it_resets() -> None:
    noon = datetime(2026, 12, 7, 12, 0, tzinfo=UTC).timestamp()
    budgets = Budgets(daily_usd=1.0, monthly_tokens=1000)
    assert budget_spent(budgets, ClientSpend(Spent(0.99, 10), Spent(5.0, 999)), noon) is None
    spent = budget_spent(budgets, ClientSpend(Spent(1.0, 10), Spent(5.0, 10)), noon)
    assert spent == BudgetSpent("daily_usd", 1.0, 1.0, 12 * 3600)
    spent = budget_spent(budgets, ClientSpend(Spent(0.5, 10), Spent(5.0, 1000)), noon)
    assert spent is not None and spent.budget == "monthly_tokens"
    assert spent.resets_in_s == datetime(2027, 1, 1, tzinfo=UTC).timestamp() - noon == next_month_s(noon)
    assert budgets_left(budgets, ClientSpend(Spent(1.5, 0), Spent(0, 400))) == {
        "daily_usd": 0.0,
        "monthly_tokens": 600.0,
    }
    error = budget_exceeded("web", BudgetSpent("daily_usd", 1.02, 1.0, 3 * 3600 + 61), downgrade=False)
    assert (error.status, error.type, error.code, error.headers["retry-after"]) == (
        429,
        "insufficient_quota",
        "budget_exceeded",
        "10861",
    )
    assert "$1.02 of $1.00" in error.message and "spec.clients[web].budgets.dailyUsd" in error.message


# --- real sidecars on one Redis -----------------------------------------------------------------


def sdk(url: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=url, api_key="unused", max_retries=0)


async def scrape(url: str) -> dict[str, float]:
    async with aiohttp.ClientSession() as http, http.get(url) as response:
        text = await response.text()
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }


def cost_of(completion: Any) -> tuple[float, int]:
    use = TokenUse.of(completion.usage.model_dump())
    cost = PriceTable().cost_usd(completion.model, use)
    assert cost is not None
    return cost, use.input + use.output


@pytest.fixture
def web_pod(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in WEB.items():
        monkeypatch.setenv(name, value)


async def test_a_budget_holds_across_sidecars_and_its_spend_is_in_redis(
    make_sidecar: SidecarFactory, redis_server: RedisServer, web_pod: None
) -> None:
    redis = {"url": redis_server.url, "heartbeat_interval_s": 0.1}
    budget = 0.01  # dollars: a few o1 answers
    clients = [{"name": "web", "budgets": {"daily_usd": budget}, "match": {"workloads": ["Deployment/web"]}}]
    one = await make_sidecar(redis=redis, clients=clients)
    two = await make_sidecar(redis=redis, clients=clients)
    gauge = 'o1_api_budget_remaining{budget="daily_usd",client="web"}'
    assert (await scrape(one.metrics_url))[gauge] == pytest.approx(budget)

    spent_usd, spent_tokens, answered = 0.0, 0, []
    with pytest.raises(openai.RateLimitError) as refused:
        for i in range(100):
            completion = await sdk(one.url).chat.completions.create(
                model="o1", messages=[{"role": "user", "content": f"question {i}"}]
            )
            answered.append(completion)
            cost, tokens = cost_of(completion)
            spent_usd, spent_tokens = spent_usd + cost, spent_tokens + tokens
    assert refused.value.code == "budget_exceeded" and refused.value.response.headers["retry-after"]
    assert len(answered) >= 2 and spent_usd >= budget and spent_usd - cost_of(answered[-1])[0] < budget

    # The other sidecar learns it from Redis, and refuses too; a stored answer still costs nothing.
    async def two_knows() -> bool:
        return (await scrape(two.metrics_url))[gauge] == 0.0

    await until(two_knows, "the second sidecar's budget gauge at 0")
    with pytest.raises(openai.RateLimitError, match="has spent its daily budget"):
        await sdk(two.url).chat.completions.create(model="o1", messages=[{"role": "user", "content": "more"}])
    hit = await sdk(two.url).chat.completions.with_raw_response.create(
        model="o1", messages=[{"role": "user", "content": "question 0"}]
    )
    assert hit.headers["x-o1pool-cache"] in ("l1", "l2")

    # The pool's spend HASH holds exactly what the answers cost (what the operator's status reads).
    client = Redis.from_url(redis_server.url)
    try:
        keys = PoolKeys("o1pool", "tests", "test")

        async def written() -> bool:
            spend = await read_spend(client, keys, ["web"], datetime.now(UTC).timestamp())
            return spend["web"].today.tokens == spent_tokens

        await until(written, "the spend of every answer in Redis")
        spend = (await read_spend(client, keys, ["web"], datetime.now(UTC).timestamp()))["web"]
        assert spend.today.usd == pytest.approx(spent_usd, abs=1e-5) and spend.month == spend.today
    finally:
        await client.aclose()


async def test_downgrade_answers_from_the_fallback_chain_once_the_budget_is_spent(
    make_sidecar: SidecarFactory, redis_server: RedisServer, web_pod: None
) -> None:
    clients = [{"name": "web", "match": {}, "budgets": {"daily_tokens": 1}, "on_budget": "downgrade"}]
    sidecar = await make_sidecar(
        redis={"url": redis_server.url}, clients=clients, fallback={"chains": {"o1": ["o1-mini"]}}
    )
    first = await sdk(sidecar.url).chat.completions.with_raw_response.create(
        model="o1", messages=[{"role": "user", "content": "one"}]
    )
    assert first.headers["x-o1pool-model"] == "o1"
    second = await sdk(sidecar.url).chat.completions.with_raw_response.create(
        model="o1", messages=[{"role": "user", "content": "two"}]
    )
    assert (second.headers["x-o1pool-model"], second.headers["x-o1pool-degraded"]) == ("o1-mini", "true")
    with pytest.raises(openai.RateLimitError, match="no fallback to downgrade to"):
        await sdk(sidecar.url).chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "x"}]
        )


async def test_the_ceiling_lowers_the_priority_and_the_answer_says_so(
    make_sidecar: SidecarFactory, web_pod: None
) -> None:
    sidecar = await make_sidecar(clients=[{"name": "web", "match": {}, "max_priority": 5}])
    answer = await sdk(sidecar.url).chat.completions.with_raw_response.create(
        model="o1",
        messages=[{"role": "user", "content": "urgent!"}],
        extra_headers={"x-o1pool-priority": "9"},
    )
    assert (answer.headers["x-o1pool-priority"], answer.headers["x-o1pool-priority-asked"]) == ("5", "9")
    waits = await scrape(sidecar.metrics_url)
    info = 'o1_api_sidecar_info{client="web",service_account="web",workload="Deployment/web"}'
    assert waits[info] == 1  # (the pod's identity and its client, to join its other series by pod)
    assert waits['o1_api_queue_wait_seconds_count{priority="5"}'] == 1
    assert 'o1_api_queue_wait_seconds_count{priority="9"}' not in waits
    low = await sdk(sidecar.url).chat.completions.with_raw_response.create(
        model="o1", messages=[{"role": "user", "content": "later"}], extra_headers={"x-o1pool-priority": "2"}
    )
    assert "x-o1pool-priority-asked" not in low.headers


async def test_a_clients_own_limit_holds_across_sidecars_and_refuses_in_openais_shape(
    make_sidecar: SidecarFactory, redis_server: RedisServer, emulator: EmulatorHandle, web_pod: None
) -> None:
    redis = {"url": redis_server.url}
    clients = [{"name": "web", "match": {"workloads": ["Deployment/web"]}, "limits": {"rpm": 3}}]
    one = await make_sidecar(redis=redis, clients=clients)
    two = await make_sidecar(redis=redis, clients=clients)
    answered, refused = 0, []
    for i in range(6):  # alternately through both sidecars; a short deadline: no waiting a minute
        try:
            await sdk((one, two)[i % 2].url).chat.completions.create(
                model="o1",
                messages=[{"role": "user", "content": f"question {i}"}],
                extra_headers={"x-o1pool-deadline-ms": "3000"},
            )
            answered += 1
        except openai.RateLimitError as e:
            refused.append(e)
    assert (answered, len(refused)) == (3, 3)
    assert emulator.stats()["accounts"]["acct-a"]["models"]["o1"]["admitted"] == 3  # nothing else was sent
    first = refused[0]
    assert first.code == "client_rate_limited" and 50 <= int(first.response.headers["retry-after"]) <= 60
    assert "client 'web'" in first.message and "spec.clients[].limits" in first.message
    assert (await scrape(two.metrics_url))['o1_api_queue_rejections_total{reason="client"}'] >= 1


async def test_identical_requests_behind_a_refused_one_are_not_held_to_their_deadline(
    make_sidecar: SidecarFactory, redis_server: RedisServer, web_pod: None
) -> None:
    clients = [{"name": "web", "match": {}, "budgets": {"daily_tokens": 1}}]
    sidecar = await make_sidecar(redis={"url": redis_server.url}, clients=clients)
    await sdk(sidecar.url).chat.completions.create(model="o1", messages=[{"role": "user", "content": "one"}])
    same = {"model": "o1", "messages": [{"role": "user", "content": "two"}]}
    deadline = {"x-o1pool-deadline-ms": "60000"}

    async def ask() -> str:
        try:
            await sdk(sidecar.url).chat.completions.create(**same, extra_headers=deadline)  # type: ignore[call-overload]
        except openai.RateLimitError as e:
            return str(e.code)
        return "answered"

    # The first takes the lead for the identical second; refused for the budget, it lets it go at once
    # (it used to keep it waiting for the lead's answer until its 60 s deadline).
    assert await asyncio.wait_for(asyncio.gather(ask(), ask()), 20) == ["budget_exceeded"] * 2
