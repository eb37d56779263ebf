"""A job's clock runs forward: started_at never precedes created_at, finished_at never precedes started_at."""

import pytest
from rest_framework.test import APIClient

from jobs.models import Job, KindSettings

HASH = {"kind": "hash", "input": {"data": "clock", "iterations": 10}}


def assert_in_order(job: Job) -> None:
    assert job.created_at <= job.started_at <= job.finished_at, (job.created_at, job.started_at, job.finished_at)


@pytest.mark.django_db
def test_sync_job_starts_no_earlier_than_it_was_created(api: APIClient) -> None:
    response = api.post("/api/v1/jobs/sync/", HASH, format="json")
    assert response.status_code == 200
    job = Job.objects.get(pk=response.json()["id"])
    assert_in_order(job)
    assert response.json()["created_at"] <= response.json()["started_at"]


@pytest.mark.django_db
def test_cached_job_starts_no_earlier_than_it_was_created(api: APIClient) -> None:
    KindSettings.objects.filter(kind="hash").update(cache_algorithm="lru", cache_capacity=10, cache_ttl=60)
    api.post("/api/v1/jobs/sync/", HASH, format="json")
    response = api.post("/api/v1/jobs/sync/", HASH, format="json")
    assert response.json()["cached"] is True
    assert_in_order(Job.objects.get(pk=response.json()["id"]))
