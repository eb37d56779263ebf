"""The admin's operations page: what happened in the last hour or day, from job rows, attempts and the ledger."""

from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from accounts.models import User
from credits.services import credit_charge
from jobs.models import CallbackAttempt, Job, JobMode, JobStatus
from jobs.operations import operations_overview


def _job(owner: User, status: str, *, minutes_ago: float, wait_ms: int = 10) -> Job:
    at = timezone.now() - timedelta(minutes=minutes_ago)
    return Job.objects.create(
        owner=owner,
        endpoint="jobs.async",
        kind="hash",
        mode=JobMode.ASYNC,
        status=status,
        created_at=at,
        started_at=at,
        finished_at=at,
        queue_wait_ms=wait_ms,
        cost=1,
    )


@pytest.mark.django_db
def test_overview_counts_outcomes_waits_webhooks_and_consumers(user: User, other_user: User) -> None:
    for status in (JobStatus.SUCCEEDED, JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED):
        _job(user, status, minutes_ago=5)
    _job(user, JobStatus.SUCCEEDED, minutes_ago=90)  # outside the hour, inside the day
    slow = _job(other_user, JobStatus.SUCCEEDED, minutes_ago=2, wait_ms=4000)
    CallbackAttempt.objects.create(job=slow, n=1, status_code=500)
    CallbackAttempt.objects.create(job=slow, n=2, status_code=200)
    CallbackAttempt.objects.create(job=slow, n=3, error="timeout")
    credit_charge(user_id=other_user.pk, amount=7, job_id=slow.pk)

    hour = operations_overview(window="hour")
    outcomes, waits, webhooks = hour["charts"]
    assert dict(outcomes.legend) == {"succeeded": 3, "failed": 1, "canceled": 1}
    assert max(waits.lines["worst"]) == 4000
    assert dict(webhooks.legend) == {"delivered": 1, "failed": 2}
    assert [(row["account__user__username"], row["spent"]) for row in hour["consumers"]] == [("bob", 7)]
    assert set(hour["queue_depths"]) == {"jobs", "callbacks", "maintenance"} and "fetch" in hour["circuits"]
    assert len(outcomes.buckets) == 61
    day = operations_overview(window="day")
    assert dict(day["charts"][0].legend)["succeeded"] == 4 and len(day["charts"][0].buckets) == 25


@pytest.mark.django_db
def test_the_page_is_for_staff_only(user: User, make_user: object) -> None:
    client = Client()
    client.force_login(user)
    assert client.get("/admin/operations/").status_code == 302  # to the admin's sign-in
    staff = make_user("ops-staff", is_staff=True)  # type: ignore[operator]
    client.force_login(staff)
    _job(staff, JobStatus.SUCCEEDED, minutes_ago=1)
    page = client.get("/admin/operations/?window=day")
    assert page.status_code == 200
    html = page.content.decode()
    assert html.count('<svg role="img"') == 3 and "Jobs finished per hour by outcome" in html and "succeeded: 1" in html
    assert 'href="/admin/operations/"' in client.get("/admin/").content.decode()
