"""Which Kubernetes events a status change posts (pure)."""

from __future__ import annotations

from datetime import UTC, datetime

from o1operator.reconcile import get_events
from o1operator.render import render
from o1operator.status import get_status
from tests.operator.conftest import REPO, fake_secrets, load_example, secret_values

T0 = datetime(2026, 1, 1, tzinfo=UTC)
MULTI = REPO / "examples" / "o1pool-multi-account.yaml"


def test_first_render_posts_rendered_and_repeat_posts_nothing() -> None:
    pool = load_example(MULTI)
    secrets = fake_secrets(pool["spec"])
    status = get_status(pool, render(pool, secrets), T0)
    assert [(t, r) for t, r, _ in get_events({}, status)] == [("Normal", "Rendered")]
    assert get_events(status, get_status({**pool, "status": status}, render(pool, secrets), T0)) == []


def test_missing_secret_posts_a_warning_naming_it_without_values() -> None:
    pool = load_example(MULTI)
    secrets = fake_secrets(pool["spec"])
    before = get_status(pool, render(pool, secrets), T0)
    del secrets["openai-team-b"]
    after = get_status({**pool, "status": before}, render(pool, secrets), T0)
    events = get_events(before, after)
    assert [(t, r) for t, r, _ in events] == [("Normal", "Rendered"), ("Warning", "SecretNotFound")]
    assert "'openai-team-b'" in events[1][2]
    text = str(events)
    assert not [v for v in secret_values(fake_secrets(pool["spec"])) if v in text]


def test_nothing_renderable_posts_a_warning() -> None:
    pool = load_example(MULTI)
    events = get_events({}, get_status(pool, render(pool, {}), T0))
    assert [(t, r) for t, r, _ in events] == [("Warning", "SecretNotFound"), ("Warning", "NoUsableKeys")]
