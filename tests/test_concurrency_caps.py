import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import httpx
import pytest
from django.db import transaction
from django.utils import timezone
from rest_framework.test import APIClient

from accounts.models import User
from accounts.policies import ENDPOINT_DEFAULTS
from jobs.concurrency import concurrency_admit
from jobs.execution import job_finish
from jobs.models import Job, JobStatus
from jobs.services import jobs_reconcile
from jobsite.errors import RateLimited
from tests.access_helpers import set_policy
from tests.conftest import LocalHTTPServer, auth_headers, respond, run_worker_burst
from tests.traffic_http import fire_concurrently
from tests.waiting import wait_until

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _local_fetch_targets(settings) -> None:
    settings.CALLBACK_ALLOW_PRIVATE = True  # a slow fetch target on 127.0.0.1 holds sync jobs


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


@pytest.mark.django_db(transaction=True)
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


def test_a_global_cap_admits_in_a_transaction_up_to_the_cap(make_user: Callable[..., User]) -> None:
    policy = set_policy("jobs.async", max_concurrent_global=2, max_concurrent_per_user=0)
    first, second, third = make_user(), make_user(), make_user()
    with transaction.atomic():  # the batch path: slots taken in the job-creating transaction
        assert concurrency_admit(user=first, policy=policy)
        assert concurrency_admit(user=second, policy=policy)
        with pytest.raises(RateLimited) as refused:
            concurrency_admit(user=third, policy=policy)
    assert refused.value.extra["limit"] == {"policy": "jobs.async", "cap": "max_concurrent_global", "max": 2}
    assert "2 of 2 jobs" in str(refused.value)


def test_sync_jobs_count_while_running(api: APIClient, user: User) -> None:
    policy = set_policy("jobs.sync", max_concurrent_per_user=1)
    with transaction.atomic():  # a sync job mid-run: admitted and recorded, not yet finished
        concurrency_admit(user=user, policy=policy)
        running = Job.objects.create(
            owner=user,
            endpoint="jobs.sync",
            kind="hash",
            mode="sync",
            status=JobStatus.RUNNING,
            started_at=timezone.now(),
        )
    refused = api.post("/api/v1/jobs/sync/", HASH, format="json")
    assert refused.status_code == 429
    assert job_finish(running, status=JobStatus.SUCCEEDED, result={})
    assert api.post("/api/v1/jobs/sync/", HASH, format="json").status_code == 200


@pytest.mark.django_db(transaction=True)
@pytest.mark.slow
@pytest.mark.parametrize("cap", ["max_concurrent_per_user", "max_concurrent_global"])
def test_caps_are_exact_under_concurrency(server_url: str, make_user: Callable[..., User], cap: str) -> None:
    set_policy("jobs.async", **{"max_concurrent_per_user": 0, cap: 5})
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


@pytest.mark.django_db(transaction=True)
@pytest.mark.slow
def test_one_user_cannot_hold_the_web_tier_with_sync_jobs(
    server_url: str, make_user: Callable[..., User], http_server: Callable[..., LocalHTTPServer]
) -> None:
    """The default jobs.sync policy caps each user's sync jobs; the web tier keeps serving everyone else."""
    set_policy("jobs.sync")  # the defaults, as shipped
    cap = ENDPOINT_DEFAULTS["jobs.sync"]["max_concurrent_per_user"]
    assert 0 < cap < 16  # below the web threads of the run command (and of this test server: 32)
    release = threading.Event()
    server = http_server(lambda request: (release.wait(60), respond(request, 200, b"slow")))
    hog, other = make_user(), make_user()
    hog_headers = auth_headers(hog)
    fetch = {"kind": "fetch", "input": {"url": server.url}}
    pool = ThreadPoolExecutor(3 * cap)
    with httpx.Client(base_url=server_url, timeout=60, limits=httpx.Limits(max_connections=3 * cap)) as client:
        try:
            futures = [
                pool.submit(client.post, "/api/v1/jobs/sync/", json=fetch, headers=hog_headers) for _ in range(3 * cap)
            ]
            wait_until(lambda: len(server.requests) == cap and sum(f.done() for f in futures) == 2 * cap, timeout=30)
            refused = [f.result() for f in futures if f.done()]
            assert {r.status_code for r in refused} == {429}
            assert refused[0].json()["limit"] == {"policy": "jobs.sync", "cap": "max_concurrent_per_user", "max": cap}
            # While the hog's jobs hold their threads, another user's sync job runs at once.
            served = client.post("/api/v1/jobs/sync/", json=HASH, headers=auth_headers(other))
            assert served.status_code == 200
        finally:
            release.set()
            statuses = [f.result().status_code for f in futures]
            pool.shutdown()
    assert statuses.count(200) == cap and statuses.count(429) == 2 * cap, statuses
    assert len(server.requests) == cap
