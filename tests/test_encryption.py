"""Sensitive fields are encrypted at rest, masked in the API, opened by the worker, and survive key rotation."""

from collections.abc import Iterator
from unittest.mock import ANY

import pytest
from cryptography.fernet import Fernet
from django.core.management import call_command
from django.db import connection
from django.forms.models import model_to_dict
from rest_framework.test import APIClient

from accounts.models import User
from jobs.encryption import MASK
from jobs.forms import KindSettingsForm
from jobs.kinds.hash import compute_hash
from jobs.models import Job, KindSettings
from jobs.webhooks import webhook_signing_secrets
from jobsite.crypto import get_fernet
from tests.conftest import run_worker_burst
from tests.job_helpers import kind_settings

pytestmark = pytest.mark.django_db

SECRET = "correct horse battery staple"


@pytest.fixture(autouse=True)
def _fresh_keys(settings) -> Iterator[None]:
    settings.ENCRYPTION_KEYS = [Fernet.generate_key().decode()]
    get_fernet.cache_clear()
    kind_settings("hash", encrypt_fields="data,result")
    yield
    get_fernet.cache_clear()


def raw_row(job_id: str) -> str:
    pk = Job._meta.pk.get_db_prep_value(Job._meta.pk.to_python(job_id), connection)
    with connection.cursor() as cursor:
        cursor.execute("SELECT input, result FROM jobs_job WHERE id = %s", [pk])
        return " ".join(str(value) for value in cursor.fetchone())


def test_raw_row_holds_no_plaintext_and_the_api_masks_input(api: APIClient) -> None:
    expected = compute_hash(SECRET, 3)
    body = api.post("/api/v1/jobs/sync/", {"kind": "hash", "input": {"data": SECRET, "iterations": 3}}, format="json")
    job = body.json()
    assert job["input"] == {"data": MASK, "iterations": 3}
    assert job["result"] == expected
    raw = raw_row(job["id"])
    assert SECRET not in raw and expected["output_hash"] not in raw and expected["input_hash"] not in raw


def test_the_compatible_routes_answer_an_encrypted_result_plain(api: APIClient) -> None:
    """/sync, /requests and /requests/{id} read a job through the API's opening of results: never sealed."""
    expected = compute_hash(SECRET, 3)
    answer = api.post("/sync", {"data": SECRET, "iterations": 3}, format="json").json()
    request_id = answer["result"]["request_id"]
    assert answer["result"] == {"request_id": request_id, **expected, "processing_time_ms": ANY}
    record = api.get(f"/requests/{request_id}").json()
    assert record["result"] == answer["result"]
    assert record["data"] == MASK and record["iterations"] == 3
    assert api.get("/requests").json()["requests"][0]["result"] == answer["result"]
    assert expected["output_hash"] not in raw_row(request_id)


def test_the_kind_settings_form_accepts_result_among_encrypted_fields() -> None:
    row = KindSettings.objects.get(kind="hash")

    def form(encrypt_fields: str) -> KindSettingsForm:
        return KindSettingsForm(instance=row, data={**model_to_dict(row), "encrypt_fields": encrypt_fields})

    accepted = form("result, data")
    assert accepted.is_valid(), accepted.errors
    assert accepted.cleaned_data["encrypt_fields"] == "result,data"
    refused = form("nonsense")
    assert not refused.is_valid() and "encrypt_fields" in refused.errors


def test_a_cache_hit_is_stored_sealed_and_reads_back(api: APIClient) -> None:
    kind_settings("hash", encrypt_fields="data,result", cache_algorithm="lru")
    body = {"kind": "hash", "input": {"data": SECRET, "iterations": 3}}
    first = api.post("/api/v1/jobs/sync/", body, format="json").json()
    hit = api.post("/api/v1/jobs/async/", body, format="json").json()
    assert hit["cached"] is True
    assert hit["result"] == first["result"] == compute_hash(SECRET, 3)
    assert api.get(f"/api/v1/jobs/{hit['id']}/").json()["result"] == compute_hash(SECRET, 3)
    assert compute_hash(SECRET, 3)["output_hash"] not in raw_row(hit["id"])


@pytest.mark.django_db(transaction=True)
def test_worker_opens_the_input_to_run(api: APIClient) -> None:
    job_id = api.post(
        "/api/v1/jobs/async/", {"kind": "hash", "input": {"data": SECRET, "iterations": 2}}, format="json"
    ).json()["id"]
    assert SECRET not in raw_row(job_id)
    run_worker_burst()
    assert api.get(f"/api/v1/jobs/{job_id}/").json()["result"] == compute_hash(SECRET, 2)


@pytest.mark.django_db(transaction=True)
def test_rotate_keys_keeps_every_row_readable_under_the_new_key_alone(api: APIClient, settings) -> None:
    ids = [
        api.post(
            "/api/v1/jobs/sync/", {"kind": "hash", "input": {"data": f"{SECRET} {i}", "iterations": 1}}, format="json"
        ).json()["id"]
        for i in range(3)
    ]
    queued = api.post("/api/v1/jobs/async/", {"kind": "hash", "input": {"data": SECRET}}, format="json").json()["id"]
    signing_secret = api.post("/api/v1/me/webhook-secret/").json()["secret"]
    old_key, new_key = settings.ENCRYPTION_KEYS[0], Fernet.generate_key().decode()
    settings.ENCRYPTION_KEYS = [new_key, old_key]
    get_fernet.cache_clear()
    call_command("rotate_keys")
    settings.ENCRYPTION_KEYS = [new_key]  # the old key is gone: only rotated rows can still be read
    get_fernet.cache_clear()
    for i, job_id in enumerate(ids):
        assert api.get(f"/api/v1/jobs/{job_id}/").json()["result"] == compute_hash(f"{SECRET} {i}", 1)
        assert SECRET not in raw_row(job_id)
    run_worker_burst()
    assert api.get(f"/api/v1/jobs/{queued}/").json()["result"] == compute_hash(SECRET, 1000)
    assert webhook_signing_secrets(user_id=User.objects.get(jobs__pk=queued).pk) == [signing_secret]
