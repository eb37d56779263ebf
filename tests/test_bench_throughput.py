"""bench.throughput's wait-then-export, shared by the throughput benchmarks, against the test session's gunicorn."""

import httpx
import pytest
from django.utils import timezone

from accounts.models import User
from bench.throughput import exported_when_idle
from jobs.models import Job, JobStatus
from tests.conftest import auth_headers


@pytest.mark.django_db(transaction=True)
def test_exported_rows_keep_strings_with_spaces(server_url: str, user: User) -> None:
    now = timezone.now()
    progress = {"fraction": 0.5, "message": "50000 of 100000 iterations", "updated_at": now.isoformat()}
    job = Job.objects.create(
        owner=user,
        endpoint="jobs.async",
        kind="hash",
        mode="async",
        status=JobStatus.SUCCEEDED,
        progress=progress,
        started_at=now,
        finished_at=now,
        result={"note": "a result with spaces"},
    )
    with httpx.Client(base_url=server_url, headers=auth_headers(user), timeout=10) as client:
        rows = exported_when_idle(client, poll_interval=0.05, timeout=10)
    (row,) = [row for row in rows if row["id"] == str(job.pk)]
    assert row["status"] == "succeeded"
    assert row["progress"]["message"] == "50000 of 100000 iterations"
