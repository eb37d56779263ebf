"""Expiry and retention: final jobs expire after their kind's retention, the purge deletes them with their
webhook attempts and idempotency records in bounded batches, and a purged job's URL answers its owner 410."""

from collections.abc import Callable
from datetime import timedelta

import httpx
import pytest
from django.test import Client, override_settings
from django.utils import timezone
from rest_framework.test import APIClient

from accounts.models import User
from jobs.models import (
    CallbackAttempt,
    CallbackStatus,
    IdempotencyRecord,
    IdempotencyStatus,
    Job,
    JobMode,
    JobStatus,
    JobTombstone,
)
from jobs.services import job_requeue, jobs_purge_expired, jobs_purge_finished_before
from tests.conftest import auth_headers
from tests.job_helpers import kind_settings

HASH = {"kind": "hash", "input": {"data": "x", "iterations": 10}}


def expire(*job_ids: str) -> None:
    Job.objects.filter(pk__in=job_ids).update(expires_at=timezone.now() - timedelta(seconds=1))


@pytest.mark.django_db
def test_a_final_job_expires_after_its_kinds_retention(api: APIClient) -> None:
    kind_settings("hash", retention=3)
    done = api.post("/api/v1/jobs/sync/", HASH, format="json").json()
    finished_at = Job.objects.get(pk=done["id"]).finished_at
    assert Job.objects.get(pk=done["id"]).expires_at == finished_at + timedelta(days=3)
    assert done["expires_at"] is not None

    queued = api.post("/api/v1/jobs/async/", {"kind": "hash", "input": {"data": "y"}}, format="json").json()
    assert queued["status"] == "queued" and queued["expires_at"] is None  # not final: it does not expire
    canceled = api.post(f"/api/v1/jobs/{queued['id']}/cancel/").json()
    job = Job.objects.get(pk=queued["id"])
    assert canceled["expires_at"] and job.expires_at == job.finished_at + timedelta(days=3)


@pytest.mark.django_db(transaction=True)
def test_a_purged_job_answers_410_to_its_owner_and_404_to_others(
    server_url: str, user: User, other_user: User, make_user: Callable[..., User]
) -> None:
    staff = make_user("staffer", is_staff=True)
    with (
        httpx.Client(base_url=server_url, headers=auth_headers(user), timeout=30) as owner,
        httpx.Client(base_url=server_url, headers=auth_headers(other_user), timeout=30) as other,
        httpx.Client(base_url=server_url, headers=auth_headers(staff), timeout=30) as admin,
    ):
        job_id = owner.post("/api/v1/jobs/sync/", json=HASH, headers={"Idempotency-Key": "k-1"}).json()["id"]
        kept = owner.post("/api/v1/jobs/sync/", json=HASH).json()["id"]
        CallbackAttempt.objects.create(job_id=job_id, n=1, status_code=200)
        assert IdempotencyRecord.objects.filter(job_id=job_id).exists()
        assert other.get(f"/api/v1/jobs/{job_id}/").status_code == 404
        expire(job_id)

        assert jobs_purge_expired()["jobs_purged"] == 1

        gone = owner.get(f"/api/v1/jobs/{job_id}/")
        assert gone.status_code == 410, gone.text
        assert gone.headers["Content-Type"].startswith("application/problem+json")
        assert gone.json()["code"] == "job_expired" and gone.json()["status"] == 410
        assert owner.post(f"/api/v1/jobs/{job_id}/cancel/").status_code == 410
        assert owner.post(f"/api/v1/jobs/{job_id}/webhook/redeliver/").status_code == 410
        assert admin.get(f"/api/v1/jobs/{job_id}/").status_code == 410
        unknown = other.get(f"/api/v1/jobs/{job_id}/")  # no existence leak: as for any id that is not theirs
        assert unknown.status_code == 404 and unknown.json()["code"] == "not_found"
        assert other.post(f"/api/v1/jobs/{job_id}/cancel/").status_code == 404
        assert [job["id"] for job in owner.get("/api/v1/jobs/").json()["results"]] == [kept]
        assert owner.get(f"/api/v1/jobs/{kept}/").status_code == 200
    tombstone = JobTombstone.objects.get(pk=job_id)
    assert tombstone.owner_id == user.pk
    assert not CallbackAttempt.objects.filter(job_id=job_id).exists()
    assert not IdempotencyRecord.objects.filter(key="k-1").exists()  # it would replay a job that is gone


@pytest.mark.django_db
@override_settings(TOMBSTONE_RETENTION_DAYS=30)
def test_idempotency_keys_and_tombstones_follow_the_clock(api: APIClient, user: User) -> None:
    now = timezone.now()
    common = {"owner": user, "fingerprint": "f", "status": IdempotencyStatus.COMPLETED, "created_at": now}
    IdempotencyRecord.objects.create(key="old", expires_at=now, locked_until=now, **common)
    IdempotencyRecord.objects.create(key="live", expires_at=now + timedelta(hours=1), locked_until=now, **common)
    old_id, new_id = "00000000-0000-0000-0000-00000000000a", "00000000-0000-0000-0000-00000000000b"
    JobTombstone.objects.create(id=old_id, owner=user, expired_at=now, purged_at=now - timedelta(days=31))
    JobTombstone.objects.create(id=new_id, owner=user, expired_at=now, purged_at=now - timedelta(days=29))

    report = jobs_purge_expired()

    assert report == {"jobs_purged": 0, "batches_purged": 0, "idempotency_keys_purged": 1, "tombstones_purged": 1}
    assert list(IdempotencyRecord.objects.values_list("key", flat=True)) == ["live"]
    assert api.get(f"/api/v1/jobs/{old_id}/").status_code == 404  # its tombstone is gone too: as any unknown id
    assert api.get(f"/api/v1/jobs/{new_id}/").status_code == 410


@pytest.mark.django_db
def test_purge_runs_are_bounded_and_carry_on(user: User) -> None:
    now = timezone.now()
    common = {"owner": user, "endpoint": "jobs.async", "kind": "hash", "mode": JobMode.ASYNC}
    Job.objects.bulk_create(
        Job(**common, status=JobStatus.SUCCEEDED, finished_at=now, expires_at=now - timedelta(minutes=n))
        for n in range(7)
    )
    assert jobs_purge_expired(batch_size=2, max_batches=2)["jobs_purged"] == 4
    assert Job.objects.count() == 3
    assert jobs_purge_expired(batch_size=2, max_batches=2)["jobs_purged"] == 3
    assert JobTombstone.objects.count() == 7


@pytest.mark.django_db
def test_a_job_whose_webhook_is_still_being_delivered_waits_for_it(user: User) -> None:
    now = timezone.now()
    job = Job.objects.create(
        owner=user, endpoint="jobs.async", kind="hash", mode=JobMode.ASYNC, status=JobStatus.SUCCEEDED,
        finished_at=now, expires_at=now, callback_url="http://127.0.0.1:9/h", callback_status=CallbackStatus.PENDING,
    )  # fmt: skip
    assert jobs_purge_expired()["jobs_purged"] == 0
    assert jobs_purge_finished_before(finished_before=now + timedelta(seconds=1)) == 0
    Job.objects.filter(pk=job.pk).update(callback_status=CallbackStatus.FAILED)
    assert jobs_purge_expired()["jobs_purged"] == 1


@pytest.mark.django_db
def test_a_requeued_job_is_not_purged(user: User) -> None:
    now = timezone.now()
    failed = Job.objects.create(
        owner=user, endpoint="jobs.async", kind="hash", mode=JobMode.ASYNC, status=JobStatus.FAILED,
        finished_at=now, expires_at=now - timedelta(seconds=1), input={"data": "x", "iterations": 1},
    )  # fmt: skip
    assert job_requeue(job_id=failed.pk)
    assert jobs_purge_expired()["jobs_purged"] == 0
    failed.refresh_from_db()
    assert failed.status == JobStatus.QUEUED and failed.expires_at is None


@pytest.mark.django_db
def test_admin_shows_what_the_next_purge_removes(make_user: Callable[..., User], user: User) -> None:
    staff = Client()
    staff.force_login(make_user("root", is_staff=True, is_superuser=True))
    now = timezone.now()
    common = {"owner": user, "endpoint": "jobs.async", "kind": "hash", "mode": JobMode.ASYNC}
    doomed = Job.objects.create(**common, status=JobStatus.SUCCEEDED, finished_at=now, expires_at=now)
    kept = Job.objects.create(**common, status=JobStatus.SUCCEEDED, finished_at=now, expires_at=now + timedelta(1))
    page = staff.get("/admin/jobs/job/?retention=awaiting_purge").content.decode()
    assert "expired, awaiting purge" in page and "1 job" in page
    assert str(doomed.pk)[:8] in page and str(kept.pk)[:8] not in page
    JobTombstone.objects.create(id=kept.pk, owner=user, expired_at=now)
    for search in ("", f"?q={str(kept.pk)[:8]}", "?q=alice", "?q=not-an-id"):
        assert staff.get(f"/admin/jobs/jobtombstone/{search}").status_code == 200, search
    assert str(kept.pk) in staff.get(f"/admin/jobs/jobtombstone/?q={str(kept.pk)[:8]}").content.decode()
    settings_page = staff.get("/admin/jobs/kindsettings/add/").content.decode()
    assert "Retention (days)" in settings_page


def test_the_purge_is_registered_with_rq_cron() -> None:
    from rq import cron

    import jobs.cron  # noqa: F401 - registers on import

    assert any(entry["func"].__name__ == "purge_expired" for entry in cron._job_data_registry)
