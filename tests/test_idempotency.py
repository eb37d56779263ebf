from collections.abc import Callable
from datetime import timedelta

import httpx
import pytest
from django.test import override_settings
from django.utils import timezone
from rest_framework.test import APIClient

from accounts.models import User
from credits.models import EntryType, LedgerEntry
from jobs.idempotency import idempotency_claim, request_fingerprint
from jobs.models import IdempotencyRecord, IdempotencyStatus, Job, JobStatus
from jobs.tasks import purge_expired
from tests.access_helpers import set_policy
from tests.conftest import auth_headers
from tests.processes import free_port
from tests.traffic_http import fire_concurrently

pytestmark = pytest.mark.django_db

HASH = {"kind": "hash", "input": {"data": "hello", "iterations": 10}}
OTHER = {"kind": "hash", "input": {"data": "other", "iterations": 10}}


def post(client: APIClient, path: str, body: dict, key: str | None = "key-1", **headers: str):
    if key is not None:
        headers["HTTP_IDEMPOTENCY_KEY"] = key
    return client.post(path, body, format="json", **headers)


def test_same_key_same_body_replays_the_first_response(api: APIClient) -> None:
    first = post(api, "/api/v1/jobs/sync/", HASH)
    assert first.status_code == 200
    assert not first.has_header("Idempotent-Replayed")
    again = post(api, "/api/v1/jobs/sync/", {"input": {"iterations": 10, "data": "hello"}, "kind": "hash"})
    assert again.status_code == 200
    assert again["Idempotent-Replayed"] == "true"
    assert again.json() == first.json()
    assert Job.objects.count() == 1


def test_async_replay_keeps_status_and_location(api: APIClient) -> None:
    first = post(api, "/api/v1/jobs/async/", HASH)
    assert first.status_code == 202
    again = post(api, "/api/v1/jobs/async/", HASH)
    assert (again.status_code, again["Location"], again["Idempotent-Replayed"]) == (202, first["Location"], "true")
    assert again.json()["id"] == first.json()["id"]
    assert Job.objects.count() == 1


def test_different_body_or_path_is_422(api: APIClient) -> None:
    assert post(api, "/api/v1/jobs/sync/", HASH).status_code == 200
    for path, body in (("/api/v1/jobs/sync/", OTHER), ("/api/v1/jobs/async/", HASH)):
        response = post(api, path, body)
        assert response.status_code == 422
        assert response.json()["code"] == "idempotency_key_reused"
    assert Job.objects.count() == 1


def test_in_flight_is_409(api: APIClient, user: User) -> None:
    fingerprint = request_fingerprint(method="POST", path="/api/v1/jobs/sync/", data=HASH)
    assert idempotency_claim(user=user, key="key-1", fingerprint=fingerprint, ttl=60) is None
    response = post(api, "/api/v1/jobs/sync/", HASH)
    assert response.status_code == 409
    assert response.json()["code"] == "idempotency_in_flight"
    assert Job.objects.count() == 0


def test_rejected_requests_store_nothing_and_release_the_key(api: APIClient) -> None:
    invalid = post(api, "/api/v1/jobs/sync/", {"kind": "hash", "input": {"data": ""}})
    assert invalid.status_code == 400
    set_policy("jobs.async", max_concurrent_per_user=1)
    assert post(api, "/api/v1/jobs/async/", HASH, key="other").status_code == 202
    capped = post(api, "/api/v1/jobs/async/", HASH)
    assert capped.status_code == 429
    assert IdempotencyRecord.objects.filter(key="key-1").count() == 0
    # The key is free: a valid request with it runs.
    assert post(api, "/api/v1/jobs/sync/", HASH).status_code == 200


def test_a_refusal_before_the_acceptance_answers_a_recorded_key_as_recorded(api: APIClient) -> None:
    set_policy("jobs.async", max_concurrent_per_user=1)
    first = post(api, "/api/v1/jobs/async/", HASH)  # queued (no worker here): it holds the only slot
    again = post(api, "/api/v1/jobs/async/", HASH)
    assert (first.status_code, again.status_code, again["Idempotent-Replayed"]) == (202, 202, "true")
    assert again.json() == first.json()
    # Another key meets the cap: refused, and its key stays free.
    assert post(api, "/api/v1/jobs/async/", HASH, key="key-2").status_code == 429
    assert not IdempotencyRecord.objects.filter(key="key-2").exists()
    assert Job.objects.count() == 1


@override_settings(CALLBACK_ALLOW_PRIVATE=True)  # the fetch target is a closed local port
def test_failed_sync_job_is_stored_and_replayed(api: APIClient) -> None:
    fetch = {"kind": "fetch", "input": {"url": f"http://127.0.0.1:{free_port()}/"}}  # closed: nothing listens
    first = post(api, "/api/v1/jobs/sync/", fetch)
    assert first.status_code == 502
    again = post(api, "/api/v1/jobs/sync/", fetch)
    assert (again.status_code, again["Idempotent-Replayed"]) == (502, "true")
    assert again["Content-Type"] == "application/problem+json"
    assert again.json() == first.json()
    assert Job.objects.count() == 1


def test_keys_are_per_user(client_for: Callable[[User], APIClient], user: User, other_user: User) -> None:
    first = post(client_for(user), "/api/v1/jobs/sync/", HASH)
    second = post(client_for(other_user), "/api/v1/jobs/sync/", OTHER)
    assert (first.status_code, second.status_code) == (200, 200)
    assert not second.has_header("Idempotent-Replayed")
    assert Job.objects.count() == 2


def test_ttl_from_policy(api: APIClient) -> None:
    set_policy("jobs.sync", idempotency_ttl=120)
    post(api, "/api/v1/jobs/sync/", HASH)
    record = IdempotencyRecord.objects.get()
    assert abs((record.expires_at - record.created_at).total_seconds() - 120) < 1
    # Once expired, the key starts over, even with another body.
    IdempotencyRecord.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    again = post(api, "/api/v1/jobs/sync/", OTHER)
    assert again.status_code == 200
    assert not again.has_header("Idempotent-Replayed")
    assert Job.objects.count() == 2


def test_abandoned_in_flight_key_is_taken_over(api: APIClient, user: User) -> None:
    fingerprint = request_fingerprint(method="POST", path="/api/v1/jobs/sync/", data=HASH)
    idempotency_claim(user=user, key="key-1", fingerprint=fingerprint, ttl=60)
    IdempotencyRecord.objects.update(locked_until=timezone.now() - timedelta(seconds=1))
    assert post(api, "/api/v1/jobs/sync/", HASH).status_code == 200
    assert IdempotencyRecord.objects.get().status == IdempotencyStatus.COMPLETED


def test_bad_key_is_a_validation_error(api: APIClient) -> None:
    response = post(api, "/api/v1/jobs/sync/", HASH, key="x" * 256)
    assert response.status_code == 400
    assert response.json()["errors"][0]["field"] == "Idempotency-Key"
    assert Job.objects.count() == 0


@pytest.mark.django_db(transaction=True)
@pytest.mark.slow
@pytest.mark.parametrize("path", ["/api/v1/jobs/sync/", "/api/v1/jobs/async/"])
def test_fifty_concurrent_requests_with_one_key_make_one_job(
    server_url: str, make_user: Callable[..., User], path: str
) -> None:
    user = make_user()
    headers = {**auth_headers(user), "Idempotency-Key": "same"}
    responses = fire_concurrently(50, lambda client, _: client.post(f"{server_url}{path}", json=HASH, headers=headers))
    statuses = [response.status_code for response in responses]
    ok = 202 if path.endswith("/async/") else 200
    originals = [r for r in responses if r.status_code == ok and "Idempotent-Replayed" not in r.headers]
    replays = [r for r in responses if r.status_code == ok and r.headers.get("Idempotent-Replayed") == "true"]
    assert len(originals) == 1, statuses
    assert len(replays) + statuses.count(409) == 49, statuses
    assert {r.json()["id"] for r in replays} <= {originals[0].json()["id"]}
    assert Job.objects.count() == 1
    charges = LedgerEntry.objects.filter(account_id=user.pk, type=EntryType.CHARGE)
    assert list(charges.values_list("job_id", flat=True)) == [Job.objects.get().pk]  # one charge, for that job
    different = httpx.post(f"{server_url}{path}", json=OTHER, headers=headers, timeout=30)
    assert different.status_code == 422
    assert different.json()["code"] == "idempotency_key_reused"


def test_periodic_task_purges_expired_keys(api: APIClient) -> None:
    post(api, "/api/v1/jobs/sync/", HASH, key="old")
    post(api, "/api/v1/jobs/sync/", HASH, key="new")
    IdempotencyRecord.objects.filter(key="old").update(expires_at=timezone.now() - timedelta(seconds=1))
    assert purge_expired()["idempotency_keys_purged"] == 1  # the retention purge (rq cron)
    assert list(IdempotencyRecord.objects.values_list("key", flat=True)) == ["new"]


def _request_died_in_flight() -> None:
    """What a SIGKILLed request leaves: its job committed, its key still in flight with no stored response."""
    IdempotencyRecord.objects.update(
        status=IdempotencyStatus.IN_FLIGHT, response_status=None, response_body=None, response_headers={}
    )


def test_key_of_a_dead_request_is_answered_by_its_async_job(api: APIClient) -> None:
    first = post(api, "/api/v1/jobs/async/", HASH)
    assert first.status_code == 202
    _request_died_in_flight()
    again = post(api, "/api/v1/jobs/async/", HASH)
    assert (again.status_code, again["Idempotent-Replayed"], again["Location"]) == (202, "true", first["Location"])
    assert again.json()["id"] == first.json()["id"]
    assert Job.objects.count() == 1
    assert IdempotencyRecord.objects.get().status == IdempotencyStatus.COMPLETED


def test_key_of_a_dead_sync_request_waits_for_its_job_then_replays_it(api: APIClient) -> None:
    first = post(api, "/api/v1/jobs/sync/", HASH)
    assert first.status_code == 200
    _request_died_in_flight()
    Job.objects.update(status=JobStatus.RUNNING, finished_at=None)  # the dead request's job has not finished
    busy = post(api, "/api/v1/jobs/sync/", HASH)
    assert (busy.status_code, busy.json()["code"], busy["Retry-After"]) == (409, "idempotency_in_flight", "1")
    reconcile_until_final = Job.objects.update(status=JobStatus.SUCCEEDED, finished_at=timezone.now())
    assert reconcile_until_final == 1
    again = post(api, "/api/v1/jobs/sync/", HASH)
    assert (again.status_code, again["Idempotent-Replayed"]) == (200, "true")
    assert again.json()["id"] == first.json()["id"]
    assert Job.objects.count() == 1


def test_in_flight_409_without_a_job_says_when_the_key_frees(api: APIClient, user: User, settings) -> None:
    settings.IDEMPOTENCY_LOCK_TIMEOUT = 30
    fingerprint = request_fingerprint(method="POST", path="/api/v1/jobs/sync/", data=HASH)
    idempotency_claim(user=user, key="key-1", fingerprint=fingerprint, ttl=60)
    response = post(api, "/api/v1/jobs/sync/", HASH)
    assert response.status_code == 409
    assert 28 <= int(response["Retry-After"]) <= 30
    assert response.json()["retry_after"] == int(response["Retry-After"])


def test_an_acknowledgement_is_stored_as_sent_and_one_held_by_prefer_wait_with_what_the_wait_applied(
    api: APIClient,
) -> None:
    # Without a wait the answer is stored with the job's acceptance: the replay is the acknowledgement as sent.
    first = post(api, "/api/v1/jobs/async/", HASH)
    again = post(api, "/api/v1/jobs/async/", HASH)
    assert (first.status_code, again.status_code, again["Idempotent-Replayed"]) == (202, 202, "true")
    assert again.json() == first.json()
    assert [again[name] for name in ("Location", "Retry-After", "Vary")] == [
        first[name] for name in ("Location", "Retry-After", "Vary")
    ]
    assert "prefer" in first["Vary"].lower()
    # A wait decides the answer after the acceptance (no worker runs here: the wait ends, 202 says what it applied).
    set_policy("jobs.async", max_wait_seconds=1)
    held = post(api, "/api/v1/jobs/async/", OTHER, key="key-2", HTTP_PREFER="wait=5")
    replay = post(api, "/api/v1/jobs/async/", OTHER, key="key-2", HTTP_PREFER="wait=5")
    assert (held.status_code, held["Preference-Applied"]) == (202, "wait=1")
    assert (replay.status_code, replay["Preference-Applied"], replay["Idempotent-Replayed"]) == (202, "wait=1", "true")
    assert replay.json() == held.json()
    assert Job.objects.count() == 2
