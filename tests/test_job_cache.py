"""The result cache as jobs use it: written only after the outcome is committed, and scoped per owner."""

from collections.abc import Iterator

import pytest
from django.test import override_settings
from rest_framework.test import APIClient

from jobs.models import Job, JobStatus
from jobs.services import job_execute
from jobsite import redis as jobsite_redis
from tests.conftest import free_port

pytestmark = pytest.mark.django_db(transaction=True)

HASH = {"kind": "hash", "input": {"data": "db first", "iterations": 5}}


@pytest.fixture
def redis_gone() -> Iterator[None]:
    """Within the block every Redis call of this process goes to a closed port: a real connection refused."""

    def reconnect() -> None:
        jobsite_redis.get_redis.cache_clear()
        jobsite_redis._script.cache_clear()

    with override_settings(REDIS_URL=f"redis://127.0.0.1:{free_port()}/0"):
        reconnect()
        try:
            yield
        finally:
            reconnect()
    reconnect()


def test_redis_failing_at_the_cache_write_keeps_the_committed_result(api: APIClient, request) -> None:
    job_id = api.post("/api/v1/jobs/async/", HASH, format="json").json()["id"]
    request.getfixturevalue("redis_gone")  # Redis dies while the worker runs the job
    assert job_execute(job_id=job_id) is None
    job = Job.objects.get(pk=job_id)
    assert job.status == JobStatus.SUCCEEDED and job.attempts == 1
    assert api.get(f"/api/v1/jobs/{job_id}/").json()["result"]["iterations"] == 5
