from collections.abc import Callable
from datetime import timedelta

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from accounts.models import User
from jobs.models import Job, JobStatus
from jobs.services import jobs_reconcile
from tests.conftest import auth_headers, run_worker_burst
from tests.traffic_http import fire_concurrently, set_policy

pytestmark = pytest.mark.django_db(transaction=True)

HASH = {"kind": "hash", "input": {"data": "hello", "iterations": 10}}


def submit(api: APIClient) -> int:
    return api.post("/api/v1/jobs/async/", HASH, format="json").status_code


def test_per_user_cap_names_the_cap_and_other_users_are_not_affected(
    client_for: Callable[[User], APIClient], user: User, other_user: User
) -> None:
    set_policy("jobs.async", max_concurrent_per_user=2)
    api = client_for(user)
    assert [submit(api), submit(api)] == [202, 202]
    refused = api.post("/api/v1/jobs/async/", HASH, format="json")
    assert refused.status_code == 429
    assert int(refused["Retry-After"]) >= 1
    problem = refused.json()
    assert problem["code"] == "rate_limited"
    assert "max_concurrent_per_user" in problem["detail"]
    assert problem["limit"] == {"policy": "jobs.async", "cap": "max_concurrent_per_user", "max": 2}
    assert submit(client_for(other_user)) == 202
    assert Job.objects.count() == 3


def test_slot_released_when_a_job_finishes_or_is_canceled(api: APIClient) -> None:
    set_policy("jobs.async", max_concurrent_per_user=1)
    first = api.post("/api/v1/jobs/async/", HASH, format="json").json()
    assert submit(api) == 429
    assert api.post(f"/api/v1/jobs/{first['id']}/cancel/").status_code == 200
    assert submit(api) == 202
    assert submit(api) == 429
    run_worker_burst()
    assert not Job.objects.filter(status__in=[JobStatus.QUEUED, JobStatus.RUNNING]).exists()
    assert submit(api) == 202


def test_slot_released_when_a_stuck_job_is_reaped(api: APIClient, settings) -> None:
    settings.JOB_MAX_ATTEMPTS = 1
    set_policy("jobs.async", max_concurrent_per_user=1)
    job_id = api.post("/api/v1/jobs/async/", HASH, format="json").json()["id"]
    long_ago = timezone.now() - timedelta(hours=1)
    Job.objects.filter(pk=job_id).update(status=JobStatus.RUNNING, started_at=long_ago, attempts=1)
    assert submit(api) == 429
    assert jobs_reconcile()["failed"] == 1
    assert submit(api) == 202


def test_global_cap(client_for: Callable[[User], APIClient], make_user: Callable[..., User]) -> None:
    set_policy("jobs.async", max_concurrent_global=2, max_concurrent_per_user=0)
    assert [submit(client_for(make_user())) for _ in range(3)] == [202, 202, 429]


def test_sync_jobs_count_while_running(api: APIClient, user: User) -> None:
    set_policy("jobs.sync", max_concurrent_per_user=1)
    Job.objects.create(owner=user, endpoint="jobs.sync", kind="hash", mode="sync", status=JobStatus.RUNNING)
    refused = api.post("/api/v1/jobs/sync/", HASH, format="json")
    assert refused.status_code == 429
    Job.objects.update(status=JobStatus.SUCCEEDED)
    assert api.post("/api/v1/jobs/sync/", HASH, format="json").status_code == 200


@pytest.mark.slow
@pytest.mark.parametrize("cap", ["max_concurrent_per_user", "max_concurrent_global"])
def test_caps_are_exact_under_concurrency(server_url: str, make_user: Callable[..., User], cap: str) -> None:
    set_policy("jobs.async", over_http=True, **{"max_concurrent_per_user": 0, cap: 5})
    users = [make_user() for _ in range(5)] if cap == "max_concurrent_global" else [make_user()]
    headers = [auth_headers(user) for user in users]
    responses = fire_concurrently(
        50,
        lambda client, i: client.post(f"{server_url}/api/v1/jobs/async/", json=HASH, headers=headers[i % len(users)]),
    )
    statuses = [response.status_code for response in responses]
    assert set(statuses) <= {202, 429}, statuses
    assert statuses.count(202) == 5, statuses
    assert Job.objects.count() == 5
