"""Batches in process (real database, real Redis): the reconciler's rescues, staff requeue, purge, the encrypted
upload store."""

from datetime import timedelta
from io import StringIO
from typing import Any

import pytest
from cryptography.fernet import Fernet
from django.core.management import call_command
from django.utils import timezone
from rest_framework import serializers
from rest_framework.test import APIClient

from jobs import queues
from jobs.batches import batches_reconcile
from jobs.execution import job_claim, job_finish
from jobs.models import Batch, BatchStatus, CallbackStatus, Job, JobStatus, Upload, UploadChunk
from jobs.serializers import BatchDependencyField
from jobs.services import job_requeue, jobs_purge_finished_before
from jobs.uploads import uploads_purge_expired
from tests.conftest import run_worker_burst

pytestmark = pytest.mark.django_db(transaction=True)


def submit(api: APIClient, n: int, **extra: Any) -> dict[str, Any]:
    requests = [{"kind": "hash", "input": {"data": f"r{i}", "iterations": 1}} for i in range(n)]
    response = api.post("/api/v1/batches/", {"requests": requests, **extra}, format="json")
    assert response.status_code == 202, response.content
    return dict(response.json())


def test_the_reconciler_completes_a_batch_whose_counters_missed_its_jobs_and_sends_its_webhook(api: APIClient) -> None:
    created = submit(api, 3, callback_url="https://receiver.example/hook")
    run_worker_burst()
    batch = Batch.objects.get(pk=created["id"])
    assert (batch.status, batch.succeeded, batch.callback_status) == (BatchStatus.COMPLETED, 3, CallbackStatus.PENDING)
    # A drift the job-final path cannot cause by itself (a counter lost to a hand edit): the reconciler repairs it.
    Batch.objects.filter(pk=batch.pk).update(succeeded=1, completed_at=None, status=BatchStatus.IN_PROGRESS)
    queues.get_queue(queues.CALLBACKS_QUEUE).empty()
    assert batches_reconcile(now=timezone.now())["batches_completed"] == 0  # too young: might be being created
    later = timezone.now() + timedelta(minutes=5)
    assert batches_reconcile(now=later)["batches_completed"] == 1
    batch.refresh_from_db()
    assert (batch.status, batch.succeeded, batch.failed, batch.canceled) == (BatchStatus.COMPLETED, 3, 0, 0)
    assert queues.get_queue(queues.CALLBACKS_QUEUE).count == 1  # its delivery, enqueued on commit
    assert batches_reconcile(now=later)["batches_completed"] == 0


def test_the_reconciler_enqueues_a_batch_delivery_that_redis_lost(api: APIClient) -> None:
    created = submit(api, 2, callback_url="https://receiver.example/hook")
    run_worker_burst()
    callbacks = queues.get_queue(queues.CALLBACKS_QUEUE)
    assert callbacks.count == 1
    callbacks.connection.flushdb()  # Redis lost everything: the queued delivery and the note of it
    report = batches_reconcile(now=timezone.now() + timedelta(minutes=5))
    assert report == {"batches_completed": 0, "batch_callbacks_requeued": 1}
    assert callbacks.count == 1
    assert batches_reconcile(now=timezone.now() + timedelta(minutes=5))["batch_callbacks_requeued"] == 0
    assert Batch.objects.get(pk=created["id"]).callback_claimed == 0  # nothing was attempted yet


def test_a_staff_requeue_of_a_failed_batch_job_keeps_the_counts_true(api: APIClient) -> None:
    created = submit(api, 2)
    claimed = job_claim(Job.objects.get(batch_id=created["id"], batch_index=1).pk, worker_name="test")
    assert claimed is not None
    assert job_finish(claimed, status=JobStatus.FAILED, error_code="upstream_error", error_message="down")
    run_worker_burst()
    batch = Batch.objects.get(pk=created["id"])
    assert (batch.status, batch.succeeded, batch.failed) == (BatchStatus.COMPLETED, 1, 1)
    assert job_requeue(job_id=claimed.pk)
    batch.refresh_from_db()
    assert (batch.failed, api.get(f"/api/v1/batches/{batch.pk}/").json()["request_counts"]["queued"]) == (0, 1)
    run_worker_burst()
    batch.refresh_from_db()
    assert (batch.status, batch.succeeded, batch.failed, batch.finished) == (BatchStatus.COMPLETED, 2, 0, 2)


def test_uploads_are_encrypted_at_rest_and_purged_after_their_retention(api: APIClient) -> None:
    secret = b'{"kind": "hash", "input": {"data": "very secret"}}\n'
    created = api.post("/api/v1/uploads/", headers={"Upload-Length": str(len(secret))}).json()
    patched = api.generic(
        "PATCH",
        f"/api/v1/uploads/{created['id']}/",
        secret,
        content_type="application/offset+octet-stream",
        headers={"Upload-Offset": "0"},
    )
    assert patched.status_code == 200 and patched["Upload-Offset"] == str(len(secret))
    (stored,) = UploadChunk.objects.values_list("data", flat=True)
    assert b"very secret" not in bytes(stored)
    json_body = api.patch(f"/api/v1/uploads/{created['id']}/", {"x": 1}, format="json", headers={"Upload-Offset": "0"})
    assert (json_body.status_code, json_body.json()["code"]) == (415, "unsupported_media_type")
    assert uploads_purge_expired() == 0
    Upload.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    assert api.get(f"/api/v1/uploads/{created['id']}/").status_code == 404
    assert uploads_purge_expired() == 1
    assert not UploadChunk.objects.exists()


def test_a_completed_batch_is_purged_with_its_jobs(api: APIClient) -> None:
    created = submit(api, 2)
    run_worker_burst()
    assert jobs_purge_finished_before(finished_before=timezone.now() - timedelta(days=1)) == 0
    assert Batch.objects.filter(pk=created["id"]).exists()
    assert jobs_purge_finished_before(finished_before=timezone.now() + timedelta(seconds=1)) == 2
    assert not Batch.objects.filter(pk=created["id"]).exists()


def test_rotate_keys_re_encrypts_the_chunks_of_uploads_in_progress(api: APIClient, settings: Any) -> None:
    old_key, new_key = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    settings.ENCRYPTION_KEYS = [old_key]
    line = b'{"kind": "hash", "input": {"data": "rotated"}}\n'
    created = api.post("/api/v1/uploads/", headers={"Upload-Length": str(len(line))}).json()
    api.generic(
        "PATCH",
        f"/api/v1/uploads/{created['id']}/",
        line,
        content_type="application/offset+octet-stream",
        headers={"Upload-Offset": "0"},
    )
    settings.ENCRYPTION_KEYS = [new_key, old_key]
    out = StringIO()
    call_command("rotate_keys", stdout=out)
    assert "1 upload chunk(s)" in out.getvalue()
    settings.ENCRYPTION_KEYS = [new_key]  # the old key is gone: only rotated chunks can still be read
    response = api.post("/api/v1/batches/", {"upload_id": created["id"]}, format="json")
    assert response.status_code == 202, response.content


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"requests": [{"kind": "hash", "input": {"data": "x"}}], "upload_id": "00000000-0000-0000-0000-000000000000"},
        {"requests": [{"kind": "hash", "input": {"data": "x"}}], "priority": "high"},
        {"requests": []},
        [{"kind": "hash", "input": {"data": "x"}}],
    ],
    ids=["neither", "both", "unknown-member", "empty", "not-an-object"],
)
def test_a_batch_body_takes_one_of_its_two_forms_exactly(api: APIClient, body: Any) -> None:
    response = api.post("/api/v1/batches/", body, format="json")
    assert (response.status_code, response.json()["code"]) == (400, "validation_error")
    assert not Batch.objects.exists() and not Job.objects.exists()


def test_a_dependency_index_is_a_json_schema_integer() -> None:
    """3.0 is an integer to JSON Schema (and the fuzzer sends it); 3.5, -1, true and a non-id string are not."""
    field = BatchDependencyField()
    assert field.to_internal_value(3.0) == 3 and field.to_internal_value(3) == 3
    for refused in (3.5, -1, True, "x"):
        with pytest.raises(serializers.ValidationError):
            field.to_internal_value(refused)


@pytest.mark.parametrize("member", [{"priority": "high"}, {"run_at": "2030-01-01T00:00:00Z"}])
def test_a_batch_item_refuses_what_only_a_single_async_job_takes_and_says_so(
    api: APIClient, member: dict[str, str]
) -> None:
    item = {"kind": "hash", "input": {"data": "x"}, **member}
    response = api.post("/api/v1/batches/", {"requests": [item]}, format="json")
    assert response.status_code == 400
    [name] = member
    assert {
        "field": f"requests.0.{name}",
        "message": f"A batch's jobs take no {name} of their own.",
    } in response.json()["errors"]
    assert not Batch.objects.exists() and not Job.objects.exists()
