from datetime import timedelta

import pytest
from django.core.management import call_command
from django.utils import timezone
from rest_framework.test import APIClient

from accounts.models import User
from accounts.policies import get_endpoint_policy
from credits.selectors import credit_balance
from jobs.models import Job, JobMode, JobStatus, JobTombstone
from jobs.webhooks import webhook_signing_secrets
from jobsite.process_cache import settings_cache


@pytest.mark.django_db
def test_purge_jobs_deletes_expired_jobs_and_with_older_than_old_finished_ones(
    user: User, capsys: pytest.CaptureFixture[str]
) -> None:
    common = {"owner": user, "endpoint": "jobs.async", "kind": "hash", "mode": JobMode.ASYNC}
    now = timezone.now()
    later = now + timedelta(days=1)
    expired = Job.objects.create(**common, status=JobStatus.SUCCEEDED, finished_at=now, expires_at=now)
    old_done = Job.objects.create(
        **common, status=JobStatus.SUCCEEDED, finished_at=now - timedelta(days=40), expires_at=later
    )
    recent_done = Job.objects.create(**common, status=JobStatus.FAILED, finished_at=now, expires_at=later)
    old_queued = Job.objects.create(**common, status=JobStatus.QUEUED, created_at=now - timedelta(days=40))

    call_command("purge_jobs")
    assert "jobs_purged: 1," in capsys.readouterr().out
    assert not Job.objects.filter(pk=expired.pk).exists() and Job.objects.filter(pk=old_done.pk).exists()

    call_command("purge_jobs", "--older-than", "30")
    assert "finished_jobs_purged: 1," in capsys.readouterr().out
    assert set(Job.objects.values_list("pk", flat=True)) == {recent_done.pk, old_queued.pk}
    assert JobTombstone.objects.filter(pk=old_done.pk, owner=user).exists()  # its URL answers 410


@pytest.mark.django_db
def test_seed_demo_prints_urls_and_credentials(capsys: pytest.CaptureFixture[str]) -> None:
    call_command("seed_demo", "--url", "http://127.0.0.1:9999")
    out = capsys.readouterr().out
    assert "http://127.0.0.1:9999/api/docs/" in out and "http://127.0.0.1:9999/admin/" in out
    assert User.objects.get(username="admin").is_staff
    demo = User.objects.get(username="demo")
    demo_key = next(line for line in out.splitlines() if line.startswith("Demo API key")).split()[3]
    client = APIClient(HTTP_AUTHORIZATION=f"Bearer {demo_key}")
    assert client.get("/api/v1/me/").json()["username"] == demo.username
    assert client.get("/api/v1/credits/").json()["balance"] == 1_000_000
    secret = next(line for line in out.splitlines() if line.startswith("Demo webhook signing secret")).split()[4]
    assert webhook_signing_secrets(user_id=demo.pk)[0] == secret
    settings_cache.changed()  # this process cached the policies before seed_demo wrote them
    assert get_endpoint_policy("jobs.sync").max_concurrent_per_user == 0  # load runs from the one demo key
    call_command("seed_demo")  # again: a fresh key, the balance topped up, not doubled
    assert client.get("/api/v1/me/").status_code == 401
    assert credit_balance(user=demo) == 1_000_000
