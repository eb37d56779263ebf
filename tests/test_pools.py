"""Worker pools, priorities and per-owner fairness over HTTP: a real gunicorn, real RQ workers, the reconciler."""

import io
import subprocess
import sys
from collections.abc import Callable
from datetime import datetime
from typing import Any

import httpx
import pytest
from django.core.management import CommandError, call_command
from django.test import Client, override_settings
from rest_framework.test import APIClient
from rq.job import Job as RQJob

from accounts.models import User
from credits.selectors import credit_balance
from jobs import queues
from jobs.forms import KindSettingsForm
from jobs.models import Job, JobStatus, KindSettings
from jobs.pools import ROOM_SIGNALS_MAX, ROOM_SIGNALS_TTL_MS, pool_dispatch, pool_staged, room_key
from jobsite.redis import get_redis
from tests.access_helpers import set_policy
from tests.conftest import ROOT, auth_headers, gunicorn_server, subprocess_env
from tests.job_helpers import kind_settings
from tests.waiting import wait_until

pytestmark = pytest.mark.django_db(transaction=True)

POOLS = {"RQ_POOLS": "cpu:1,io:1"}
"""The deployment under test: the default pool `jobs` plus `cpu` and `io`."""


def hash_job(n: int, **extra: Any) -> dict[str, Any]:
    return {"kind": "hash", "input": {"data": f"pools-{n}", "iterations": 10}, **extra}


def submit(client: httpx.Client, body: dict[str, Any]) -> str:
    response = client.post("/api/v1/jobs/async/", json=body)
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def all_final(*ids: str) -> bool:
    return Job.objects.filter(pk__in=ids, status=JobStatus.SUCCEEDED).count() == len(ids)


def test_a_kind_runs_on_its_pool_and_only_there(user: User, start_worker: Callable[..., Any]) -> None:
    kind_settings("hash", pool="cpu", cache_algorithm="none")
    with (
        gunicorn_server("pools-routing", **POOLS) as url,
        httpx.Client(base_url=url, headers=auth_headers(user), timeout=30) as client,
    ):
        hashes = [submit(client, hash_job(n)) for n in range(3)]
        stats = submit(client, {"kind": "stats", "input": {}})  # not routed: the default pool
        assert {Job.objects.get(pk=job_id).pool for job_id in hashes} == {"cpu"}
        assert Job.objects.get(pk=stats).pool == "jobs"
        assert RQJob.fetch(hashes[0], connection=get_redis()).origin == "cpu"
        # The first went onto cpu's RQ queue at once (nobody waited before it); the others wait staged.
        assert get_redis().llen("rq:queue:cpu") == 1 and pool_staged(get_redis(), "cpu")["normal"] == 2
        start_worker("cpu", **POOLS)
        wait_until(lambda: all_final(*hashes), timeout=30)
        assert Job.objects.get(pk=stats).status == JobStatus.QUEUED  # no worker serves `jobs`
        assert client.get(f"/api/v1/jobs/{hashes[0]}/").json()["priority"] == "normal"
        metrics = client.get("/metrics").text
    assert 'jobsite_queue_depth{queue="jobs"} 1.0' in metrics
    assert 'jobsite_queue_depth{queue="cpu"} 0.0' in metrics
    assert 'jobsite_queue_staged{priority="low",queue="cpu"} 0.0' in metrics
    assert 'jobsite_job_queue_wait_seconds_count{kind="hash",priority="normal",queue="cpu"} 3.0' in metrics


def test_back_pressure_is_per_pool(user: User) -> None:
    kind_settings("hash", pool="cpu", cache_algorithm="none")
    env = {**POOLS, "QUEUE_ADMISSION_DEPTH": "2", "QUEUE_ADMISSION_WAIT": "0"}
    with (
        gunicorn_server("pools-backpressure", **env) as url,
        httpx.Client(base_url=url, headers=auth_headers(user), timeout=30) as client,
    ):
        for n in range(2):
            submit(client, hash_job(n))
        full = client.post("/api/v1/jobs/async/", json=hash_job(2))
        assert full.status_code == 503 and full.json()["code"] == "queue_full", full.text
        assert "cpu" in full.json()["detail"]
        submit(client, {"kind": "stats", "input": {}})  # the jobs pool has room


def test_the_reconciler_enqueues_a_lost_job_on_its_kinds_pool(user: User, start_worker: Callable[..., Any]) -> None:
    kind_settings("hash", pool="cpu", cache_algorithm="none")
    with (
        gunicorn_server("pools-reconcile", **POOLS) as url,
        httpx.Client(base_url=url, headers=auth_headers(user), timeout=30) as client,
    ):
        job_id = submit(client, hash_job(0, priority="low"))
    RQJob.fetch(job_id, connection=get_redis()).delete()  # Redis lost it
    kind_settings("hash", pool="io", cache_algorithm="none")  # and staff moved the kind meanwhile
    reconcile = subprocess.run(
        [sys.executable, "manage.py", "reconcile_jobs"],
        cwd=ROOT,
        env=subprocess_env(**POOLS, RECONCILE_QUEUED_GRACE="0"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert reconcile.returncode == 0, reconcile.stderr
    job = Job.objects.get(pk=job_id)
    assert (job.status, job.pool, job.priority) == (JobStatus.QUEUED, "io", "low")
    assert RQJob.fetch(job_id, connection=get_redis()).origin == "io"
    start_worker("io", **POOLS)
    wait_until(lambda: all_final(job_id), timeout=30)


def test_priority_above_the_policy_is_refused_and_changes_nothing(user: User, server_url: str) -> None:
    balance = credit_balance(user=user)
    with httpx.Client(base_url=server_url, headers=auth_headers(user), timeout=30) as client:
        refused = client.post("/api/v1/jobs/async/", json=hash_job(0, priority="high"))
        assert refused.status_code == 403, refused.text
        assert refused.headers["Content-Type"] == "application/problem+json"
        assert refused.json()["code"] == "priority_not_allowed"
        assert refused.json()["limit"] == {"policy": "jobs.async", "max_priority": "normal"}
        assert Job.objects.count() == 0 and credit_balance(user=user) == balance
        sync = client.post("/api/v1/jobs/sync/", json=hash_job(1, priority="low"))
        assert sync.status_code == 400 and sync.json()["code"] == "validation_error", sync.text
        bad = client.post("/api/v1/jobs/async/", json=hash_job(2, priority="urgent"))
        assert bad.status_code == 400 and "valid choices: high, normal, low" in bad.text
        set_policy("jobs.async", max_priority="low")  # a default submission now gets the policy's ceiling
        assert client.get(f"/api/v1/jobs/{submit(client, hash_job(3))}/").json()["priority"] == "low"


def _run_order(ids: list[str]) -> list[str]:
    jobs = Job.objects.filter(pk__in=ids).order_by("started_at")
    return [str(job.pk) for job in jobs]


def test_high_goes_first_by_weight_and_low_is_never_starved(
    user: User, server_url: str, start_worker: Callable[..., Any]
) -> None:
    """PRIORITY_WEIGHTS high 4 : low 1 with both waiting: low's turn comes at least every 5 dispatches."""
    kind_settings("hash", cache_algorithm="none")
    set_policy("jobs.async", max_priority="high")
    with httpx.Client(base_url=server_url, headers=auth_headers(user), timeout=30) as client:
        lows = [submit(client, hash_job(n, priority="low")) for n in range(5)]
        highs = [submit(client, hash_job(100 + n, priority="high")) for n in range(20)]
    start_worker("jobs")  # one worker: its order is the dispatcher's
    wait_until(lambda: all_final(*lows, *highs), timeout=60)
    order = _run_order(lows + highs)
    assert order[0] == lows[0]  # dispatched when it arrived, before anything else waited
    low_positions = [order.index(job_id) for job_id in lows[1:]]
    assert sum(job_id in highs for job_id in order[1:11]) >= 7  # high first: 4 of every 5
    gaps = [later - earlier for earlier, later in zip([0, *low_positions], low_positions, strict=False)]
    assert max(gaps) <= 5, order  # strict priority would run every low after the 20 highs
    assert low_positions[-1] < len(order) - 5


def _heavy_then_light(url: str, heavy: User, light: User, *, n_heavy: int) -> tuple[list[str], list[str]]:
    with (
        httpx.Client(base_url=url, headers=auth_headers(heavy), timeout=30) as heavy_client,
        httpx.Client(base_url=url, headers=auth_headers(light), timeout=30) as light_client,
    ):
        heavy_ids = [submit(heavy_client, hash_job(n)) for n in range(n_heavy)]
        light_ids = [submit(light_client, hash_job(10_000 + n)) for n in range(3)]
    return heavy_ids, light_ids


@pytest.mark.parametrize("fairness", [True, False])
def test_a_light_users_jobs_run_before_a_heavy_backlog_drains(
    fairness: bool, make_user: Callable[..., User], start_worker: Callable[..., Any]
) -> None:
    """Fair: the light user's 3 jobs run within the first 8 (owners in turn); unfair, after the whole backlog."""
    kind_settings("hash", cache_algorithm="none")
    heavy, light = make_user("heavy"), make_user("light")
    env = {"QUEUE_FAIRNESS": str(fairness).lower()}
    with gunicorn_server(f"pools-fairness-{fairness}", **env) as url:
        heavy_ids, light_ids = _heavy_then_light(url, heavy, light, n_heavy=60)
    start_worker("jobs", **env)
    wait_until(lambda: all_final(*light_ids), timeout=60)
    last_light_start: datetime = max(Job.objects.filter(pk__in=light_ids).values_list("started_at", flat=True))
    heavy_before = Job.objects.filter(pk__in=heavy_ids, started_at__lt=last_light_start).count()
    if fairness:
        assert heavy_before <= 5  # heavy's first (already dispatched), then one heavy between light's
    else:
        assert heavy_before == len(heavy_ids)


def test_staff_route_a_kind_only_to_a_configured_pool() -> None:
    with pytest.raises(CommandError, match="pool"):
        call_command("policy", "set", "kind.fetch", "pool=io")  # this process has no pool io
    assert not KindSettings.objects.filter(kind="fetch", pool="io").exists()  # changed nothing
    with override_settings(JOB_POOLS={"jobs": 2, "io": 4}):
        call_command("policy", "set", "kind.fetch", "pool=io", stdout=io.StringIO())
        assert KindSettingsForm().fields["pool"].choices == [("jobs", "jobs (2 workers)"), ("io", "io (4 workers)")]
    assert KindSettings.objects.get(kind="fetch").pool == "io"
    call_command("policy", "set", "jobs.async", "max_priority=high", stdout=io.StringIO())
    with pytest.raises(CommandError, match="max_priority"):
        call_command("policy", "set", "jobs.async", "max_priority=urgent")


def test_the_rq_dashboard_counts_a_pools_staged_jobs(api: APIClient, make_user: Callable[..., User]) -> None:
    kind_settings("hash", cache_algorithm="none")
    for n in range(3):
        assert api.post("/api/v1/jobs/async/", hash_job(n), format="json").status_code == 202
    staff = Client()
    staff.force_login(make_user(is_staff=True, is_superuser=True))  # no TOTP device: a session is enough
    queues = {queue["name"]: queue for queue in staff.get("/admin/rq/stats.json").json()["queues"]}
    assert {"jobs", "callbacks", "maintenance"} <= set(queues)
    assert queues["jobs"]["jobs"] == 3  # one on RQ's list, two staged
    assert get_redis().llen("rq:queue:jobs") == 1


def test_a_take_leaves_one_wake_up_for_a_waiting_acknowledgement_and_idle_ones_pile_up_no_further() -> None:
    queue, redis = queues.get_queue("jobs"), get_redis()
    for _ in range(ROOM_SIGNALS_MAX + 5):  # takes with nobody waiting
        pool_dispatch(queue, took_job=True)
    assert redis.llen(room_key("jobs")) == ROOM_SIGNALS_MAX
    assert 0 < redis.pttl(room_key("jobs")) <= ROOM_SIGNALS_TTL_MS
    # A wake-up stands for a freed place: it lets in one waiter of a pool at its bound (0 here).
    assert queues.queue_wait_for_room(pool="jobs", limit=0, wait=5) is None
    assert redis.llen(room_key("jobs")) == ROOM_SIGNALS_MAX - 1
    redis.delete(room_key("jobs"))  # with none, a waiter waits its time out and is told the depth
    assert queues.queue_wait_for_room(pool="jobs", limit=0, wait=0.3) == 0
