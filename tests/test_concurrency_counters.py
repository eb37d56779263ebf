"""The concurrency counters (jobs.concurrency) stay equal to the jobs they count, whatever happens to the jobs."""

from collections.abc import Callable
from datetime import timedelta

import pytest
from django.db.models import Count
from django.utils import timezone
from rest_framework.test import APIClient

from accounts.models import User
from accounts.policies import get_endpoint_policy
from jobs.compat import ANONYMOUS_USERNAME
from jobs.models import FINAL_STATUSES, ConcurrencySlot, Job, JobStatus
from jobs.services import job_requeue, jobs_reconcile
from tests.access_helpers import open_compat_to_anonymous, set_policy
from tests.conftest import auth_headers, run_worker_burst
from tests.job_helpers import kind_settings, set_balance
from tests.processes import free_port
from tests.traffic_http import fire_concurrently

pytestmark = pytest.mark.django_db(transaction=True)

HASH = {"kind": "hash", "input": {"data": "counted", "iterations": 10}}


@pytest.fixture(autouse=True)
def _local_fetch_targets(settings) -> None:
    settings.CALLBACK_ALLOW_PRIVATE = True  # a refused fetch on 127.0.0.1 fails a sync job


def _capped(endpoint: str) -> bool:
    policy = get_endpoint_policy(endpoint)
    return bool(policy.max_concurrent_per_user or policy.max_concurrent_global)


def assert_counters_exact(*, policies_changed: bool = False) -> None:
    """The invariant: every counter is the COUNT of its queued and running jobs that hold a slot, and (unless a
    cap was set or lifted meanwhile) those are the jobs of the endpoints under a cap: uncapped ones keep none."""
    active = Job.objects.exclude(status__in=FINAL_STATUSES)
    holding = active.filter(holds_slot=True).values_list("endpoint", "owner_id")
    counted = {(endpoint, owner): n for endpoint, owner, n in holding.annotate(n=Count("id")).order_by()}
    slots = {(slot.endpoint, slot.owner_id): slot.in_use for slot in ConcurrencySlot.objects.all()}
    assert {key: n for key, n in slots.items() if n} == counted, (slots, counted)
    assert min(slots.values(), default=0) >= 0
    if not policies_changed:
        assert all(holds == _capped(endpoint) for endpoint, holds in active.values_list("endpoint", "holds_slot"))


def test_counters_equal_active_jobs_through_every_transition(
    client_for: Callable[[User], APIClient], make_user: Callable[..., User], settings
) -> None:
    settings.JOB_MAX_ATTEMPTS = 1
    set_policy("jobs.async", max_concurrent_per_user=4)
    set_policy("jobs.sync", max_concurrent_per_user=2, max_concurrent_global=10)
    open_compat_to_anonymous()
    kind_settings("hash", cost=1, cache_algorithm="none")
    alice, bob = make_user(), make_user()
    api, other = client_for(alice), client_for(bob)

    accepted = [api.post("/api/v1/jobs/async/", HASH, format="json") for _ in range(6)]
    assert [response.status_code for response in accepted] == [202] * 4 + [429] * 2
    assert other.post("/api/v1/jobs/async/", HASH, format="json").status_code == 202
    assert APIClient().post("/async", {"data": "anonymous", "iterations": 1}, format="json").status_code == 200
    assert_counters_exact()

    ids = [response.json()["id"] for response in accepted[:4]]
    for job_id in ids[:2]:
        assert api.post(f"/api/v1/jobs/{job_id}/cancel/").status_code == 200
    assert_counters_exact()

    # A lost worker: the reconciler fails the job (its last attempt), which frees its slot.
    Job.objects.filter(pk=ids[2]).update(
        status=JobStatus.RUNNING, started_at=timezone.now() - timedelta(hours=1), attempts=1
    )
    assert_counters_exact()
    assert jobs_reconcile()["failed"] == 1
    assert_counters_exact()

    # Staff requeue the failed job: it holds a slot again, then runs with the rest.
    assert job_requeue(job_id=ids[2])
    assert_counters_exact()
    run_worker_burst()
    assert Job.objects.get(pk=ids[2]).status == JobStatus.SUCCEEDED
    assert_counters_exact()

    # Sync jobs: one succeeds, one fails, one is refused for credits (nothing recorded, nothing held).
    assert api.post("/api/v1/jobs/sync/", HASH, format="json").status_code == 200
    refused_fetch = {"kind": "fetch", "input": {"url": f"http://127.0.0.1:{free_port()}/"}}
    assert api.post("/api/v1/jobs/sync/", refused_fetch, format="json").status_code == 502
    set_balance(bob, 0)
    assert other.post("/api/v1/jobs/sync/", HASH, format="json").status_code == 402
    # A cache hit is final at once and never holds a slot.
    kind_settings("hash", cost=1, cache_algorithm="lru")
    assert api.post("/api/v1/jobs/sync/", HASH, format="json").json()["cached"] is False
    assert api.post("/api/v1/jobs/async/", HASH, format="json").json()["cached"] is True
    assert_counters_exact()
    # The compatible routes have no caps: their anonymous callers, one owner, share no counter row to contend on.
    assert not ConcurrencySlot.objects.filter(owner__username=ANONYMOUS_USERNAME).exists()


def test_a_job_requeued_after_a_lost_worker_keeps_its_one_slot(api: APIClient, settings) -> None:
    settings.JOB_MAX_ATTEMPTS = 2
    set_policy("jobs.async", max_concurrent_per_user=2)
    job_id = api.post("/api/v1/jobs/async/", HASH, format="json").json()["id"]
    Job.objects.filter(pk=job_id).update(
        status=JobStatus.RUNNING, started_at=timezone.now() - timedelta(hours=1), attempts=1
    )

    assert jobs_reconcile()["requeued"] == 1
    assert_counters_exact()  # still one job, still one slot: the lost attempt's slot was never given back
    run_worker_burst()
    assert Job.objects.get(pk=job_id).status == JobStatus.SUCCEEDED
    assert_counters_exact()


def test_counters_stay_exact_when_a_cap_is_lifted_and_set_again_while_jobs_wait(api: APIClient) -> None:
    set_policy("jobs.async", max_concurrent_per_user=4)
    held = [api.post("/api/v1/jobs/async/", HASH, format="json").json()["id"] for _ in range(2)]
    set_policy("jobs.async", max_concurrent_per_user=0)
    unheld = api.post("/api/v1/jobs/async/", HASH, format="json").json()["id"]
    set_policy("jobs.async", max_concurrent_per_user=4)
    assert_counters_exact(policies_changed=True)

    assert api.post(f"/api/v1/jobs/{unheld}/cancel/").status_code == 200
    # The job admitted without a cap gives back no slot: the two that took one are still counted.
    assert_counters_exact(policies_changed=True)
    assert ConcurrencySlot.objects.get(endpoint="jobs.async").in_use == len(held)
    run_worker_burst()
    assert_counters_exact()


@pytest.mark.slow
def test_concurrent_clients_are_admitted_exactly_up_to_the_cap_and_the_counter_follows(
    server_url: str, make_user: Callable[..., User]
) -> None:
    """Real concurrent clients against gunicorn: the conditional upsert admits exactly the cap, no more."""
    set_policy("jobs.sync", max_concurrent_per_user=0, max_concurrent_global=0)
    set_policy("jobs.async", max_concurrent_per_user=7, max_concurrent_global=0)
    user = make_user()
    headers = auth_headers(user)
    responses = fire_concurrently(
        40, lambda client, i: client.post(f"{server_url}/api/v1/jobs/async/", json=HASH, headers=headers)
    )
    statuses = [response.status_code for response in responses]
    assert statuses.count(202) == 7 and statuses.count(429) == 33, statuses
    assert ConcurrencySlot.objects.get(owner=user, endpoint="jobs.async").in_use == 7
    assert_counters_exact()
    run_worker_burst()
    assert ConcurrencySlot.objects.get(owner=user, endpoint="jobs.async").in_use == 0
    # Sync jobs release their slot in the transaction that finishes them: 30 concurrent ones leave none held.
    sync = fire_concurrently(
        30, lambda client, i: client.post(f"{server_url}/api/v1/jobs/sync/", json=HASH, headers=headers)
    )
    assert {response.status_code for response in sync} == {200}
    assert_counters_exact()
