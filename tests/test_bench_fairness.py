"""bench/fairness.py's measurement, small: a real gunicorn and worker, a heavy and a light user, fairness on."""

import os
from collections.abc import Callable
from typing import Any

import pytest

from accounts.models import SCOPES, User
from accounts.services import api_key_create
from bench.fairness import measure, percentile
from credits.services import credit_grant
from tests.conftest import gunicorn_server
from tests.job_helpers import kind_settings

HEAVY, LIGHT = 40, 4


def test_percentile_is_nearest_rank() -> None:
    assert percentile([5.0, 1.0, 3.0, 2.0, 4.0], 0.5) == 3.0
    assert percentile([float(n) for n in range(1, 101)], 0.99) == 99.0
    assert percentile([7.0], 0.99) == 7.0


@pytest.mark.django_db(transaction=True)
def test_the_light_user_is_served_while_the_heavy_backlog_waits(
    make_user: Callable[..., User], start_worker: Callable[..., Any]
) -> None:
    kind_settings("hash", cache_algorithm="none")
    keys = {}
    for name in ("heavy", "light"):
        user = make_user(name)
        credit_grant(user=user, amount=1000, reason="bench")
        keys[name] = api_key_create(owner=user, name="bench", scopes=list(SCOPES))[1]
    with gunicorn_server("bench-fairness") as url:
        start_worker("jobs")
        result = measure(
            url=url,
            heavy_key=keys["heavy"],
            light_key=keys["light"],
            redis_url=os.environ["REDIS_URL"],
            heavy=HEAVY,
            light=LIGHT,
            concurrency=4,
        )
    assert result["succeeded"] == HEAVY + LIGHT
    assert result["heavy"]["jobs"] == HEAVY and result["light"]["jobs"] == LIGHT
    assert result["light"]["p50_ms"] <= result["light"]["p99_ms"] <= result["light"]["max_ms"]
    assert result["heavy_started_after_light_done"] > HEAVY // 2  # the light user did not wait for the backlog
