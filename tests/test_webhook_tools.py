"""Webhook tooling through HTTP: the session's gunicorn, a callbacks worker, a receiver on 127.0.0.1 that
verifies every signature with the standardwebhooks verifier."""

import json
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from typing import Any

import httpx
import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework.test import APIClient
from rq import Worker
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from accounts.models import User
from accounts.policies import ENDPOINT_DEFAULTS
from jobs import queues
from jobs.models import CallbackAttempt, CallbackStatus, Job, JobStatus
from tests.conftest import LocalHTTPServer, auth_headers, respond
from tests.waiting import wait_until

pytestmark = [pytest.mark.django_db(transaction=True)]  # the server and the worker read the rows tests write

HASH = {"kind": "hash", "input": {"data": "hello", "iterations": 10}}
TEST_PATH = "/api/v1/me/webhooks/test/"
DELIVERIES_PATH = "/api/v1/me/webhook-deliveries/"


@pytest.fixture
def http(server_url: str, user: User) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server_url, headers=auth_headers(user), timeout=30) as client:
        yield client


@pytest.fixture
def secret(http: httpx.Client) -> str:
    response = http.post("/api/v1/me/webhook-secret/")
    assert response.status_code == 201
    return response.json()["secret"]


class VerifyingReceiver:
    """Answers `code` to a request whose signature the standardwebhooks verifier accepts, 401 to any other."""

    def __init__(self, http_server: Callable[..., LocalHTTPServer], secret: str):
        self.secret, self.code, self.verified = secret, 200, []
        self.server = http_server(self._handle)
        self.url = self.server.url + "/hook"

    def _handle(self, request: BaseHTTPRequestHandler) -> None:
        received = self.server.requests[-1]
        try:
            body = Webhook(self.secret).verify(received["body"], received["headers"])
        except WebhookVerificationError:
            respond(request, 401, b"bad signature")
            return
        self.verified.append({"id": received["headers"]["webhook-id"], "body": body})
        respond(request, self.code, b"ok" if self.code < 300 else b"receiver says no")


@pytest.fixture
def receiver(http_server: Callable[..., LocalHTTPServer], secret: str) -> VerifyingReceiver:
    return VerifyingReceiver(http_server, secret)


def _worker_on(*queue_names: str, start_worker: Callable[..., Any]) -> None:
    start_worker(*queue_names)
    connection_ = queues.get_queue(queue_names[0]).connection
    wait_until(lambda: Worker.all(connection=connection_), timeout=30)


def test_a_test_event_arrives_signed_and_the_answer_says_how_it_went(
    http: httpx.Client, receiver: VerifyingReceiver, start_worker: Callable[..., Any]
) -> None:
    _worker_on(queues.CALLBACKS_QUEUE, start_worker=start_worker)
    response = http.post(TEST_PATH, json={"url": receiver.url})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert (answer["status"], answer["delivered"], answer["status_code"], answer["error"]) == (
        "delivered",
        True,
        200,
        "",
    )
    assert answer["duration_ms"] >= 0
    [event] = receiver.verified
    assert event["id"] == answer["webhook_id"]
    assert event["body"]["type"] == "webhook.test" and event["body"]["data"]["url"] == receiver.url
    assert event["body"]["timestamp"]

    receiver.code = 500
    failed = http.post(TEST_PATH, json={"url": receiver.url}).json()
    assert (failed["status"], failed["delivered"], failed["status_code"]) == ("failed", False, 500)
    assert failed["error"].startswith("HTTP 500: receiver says no")
    assert len(receiver.verified) == 2 and failed["webhook_id"] != answer["webhook_id"]


def test_forbidden_urls_are_400_and_a_caller_without_a_secret_is_told_to_create_one(http: httpx.Client) -> None:
    missing = http.post(TEST_PATH, json={"url": "http://127.0.0.1/hook"})
    assert missing.status_code == 409 and missing.json()["code"] == "webhook_secret_missing"
    assert "/api/v1/me/webhook-secret/" in missing.json()["detail"]
    http.post("/api/v1/me/webhook-secret/")
    for url in ("http://169.254.169.254/latest/meta-data/", "http://0.0.0.0/", "ftp://example.com/", "http://u:p@a.b/"):
        refused = http.post(TEST_PATH, json={"url": url})
        assert refused.status_code == 400, (url, refused.text)
        assert refused.json()["code"] == "callback_url_forbidden"


def test_the_test_endpoint_has_its_own_rate_limit(http: httpx.Client) -> None:
    quota = ENDPOINT_DEFAULTS["webhooks.test"]["rate_limit"]
    for _ in range(quota):  # refused URLs are cheap and still spend the quota
        assert http.post(TEST_PATH, json={"url": "ftp://example.com/"}).status_code == 400
    limited = http.post(TEST_PATH, json={"url": "ftp://example.com/"})
    assert limited.status_code == 429 and limited.json()["code"] == "rate_limited"
    assert int(limited.headers["Retry-After"]) >= 1
    assert http.get(DELIVERIES_PATH).status_code == 200  # other endpoints keep their own quotas


def _deliveries(http: httpx.Client, **query: Any) -> list[dict[str, Any]]:
    response = http.get(DELIVERIES_PATH, params=query)
    assert response.status_code == 200, response.text
    return response.json()["results"]


def _submit(http: httpx.Client, **extra: str) -> str:
    response = http.post("/api/v1/jobs/async/", json={**HASH, **extra})
    assert response.status_code == 202, response.text
    return response.json()["id"]


def test_the_delivery_log_lists_attempts_and_filters_and_redelivery_adds_one(
    http: httpx.Client,
    receiver: VerifyingReceiver,
    start_worker: Callable[..., Any],
    make_user: Callable[..., User],
    server_url: str,
) -> None:
    _worker_on(queues.JOBS_QUEUE, queues.CALLBACKS_QUEUE, start_worker=start_worker)
    receiver.code = 410  # gone: failed after one attempt, no retry
    gone = _submit(http, callback_url=receiver.url)
    wait_until(lambda: [d["status"] for d in _deliveries(http, job_id=gone)] == ["failed"])
    receiver.code = 200
    ok = _submit(http, callback_url=receiver.url)
    plain = _submit(http)  # no webhook: not a delivery
    wait_until(lambda: [d["status"] for d in _deliveries(http)] == ["delivered", "failed"])

    newest, oldest = _deliveries(http)
    assert (newest["job_id"], oldest["job_id"]) == (ok, gone) and plain not in {newest["job_id"], oldest["job_id"]}
    assert newest["url"] == receiver.url
    assert [(a["n"], a["status_code"], a["error"]) for a in newest["attempts"]] == [(1, 200, "")]
    assert [(a["n"], a["status_code"]) for a in oldest["attempts"]] == [(1, 410)]
    assert oldest["attempts"][0]["error"].startswith("HTTP 410") and oldest["attempts"][0]["duration_ms"] >= 0
    assert [e["id"] for e in receiver.verified] == [oldest["webhook_id"], newest["webhook_id"]]
    assert [d["job_id"] for d in _deliveries(http, status="failed")] == [gone]
    assert [d["job_id"] for d in _deliveries(http, status="delivered")] == [ok]
    assert _deliveries(http, status="pending") == []
    assert _deliveries(http, created_after=newest["created_at"]) == []
    assert [d["job_id"] for d in _deliveries(http, created_before=newest["created_at"])] == [gone]
    first_page = http.get(DELIVERIES_PATH, params={"page_size": 1}).json()
    assert [d["job_id"] for d in first_page["results"]] == [ok]
    assert [d["job_id"] for d in http.get(first_page["next"]).json()["results"]] == [gone]
    assert http.get(DELIVERIES_PATH, params={"status": "lost"}).status_code == 400

    redelivered = http.post(f"/api/v1/jobs/{gone}/webhook/redeliver/")
    assert redelivered.status_code == 202, redelivered.text
    assert redelivered.json()["id"] == gone and redelivered.json()["callback"]["status"] == "pending"
    wait_until(lambda: [d["status"] for d in _deliveries(http, job_id=gone)] == ["delivered"])
    [log] = _deliveries(http, job_id=gone)
    assert [(a["n"], a["status_code"]) for a in log["attempts"]] == [(1, 410), (2, 200)]
    assert receiver.verified[-1]["id"] == log["webhook_id"]  # the same webhook-id: receivers deduplicate on it

    for job_id, why in ((plain, "no callback_url"), (_pending_job(gone), "pending"), (_queued_job(gone), "queued")):
        refused = http.post(f"/api/v1/jobs/{job_id}/webhook/redeliver/")
        assert refused.status_code == 409, (why, refused.text)
        assert refused.json()["code"] == "not_redeliverable"
    with httpx.Client(base_url=server_url, headers=auth_headers(make_user())) as stranger:
        assert stranger.post(f"/api/v1/jobs/{gone}/webhook/redeliver/").status_code == 404
        assert stranger.get(DELIVERIES_PATH).json()["results"] == []


def _copy_of(job_id: str, **fields: Any) -> str:
    """A job of the same owner and callback in a state the worker would take time to reach."""
    job = Job.objects.get(pk=job_id)
    return str(
        Job.objects.create(owner=job.owner, kind=job.kind, mode=job.mode, callback_url=job.callback_url, **fields).pk
    )


def _pending_job(job_id: str) -> str:
    return _copy_of(job_id, status=JobStatus.SUCCEEDED, callback_status=CallbackStatus.PENDING)


def _queued_job(job_id: str) -> str:
    return _copy_of(job_id, status=JobStatus.QUEUED, callback_status=CallbackStatus.PENDING)


def test_the_delivery_log_reads_a_constant_number_of_queries(api: APIClient, user: User) -> None:
    def page_queries(deliveries: int) -> int:
        for _ in range(deliveries):
            job = Job.objects.create(
                owner=user,
                kind="hash",
                mode="async",
                status=JobStatus.SUCCEEDED,
                callback_url="https://example.com/hook",
                callback_status=CallbackStatus.FAILED,
            )
            CallbackAttempt.objects.bulk_create(
                [CallbackAttempt(job=job, n=n, status_code=500, error="HTTP 500") for n in (1, 2)]
            )
        with CaptureQueriesContext(connection) as queries:
            response = api.get(DELIVERIES_PATH)
        assert response.status_code == 200
        assert all(len(d["attempts"]) == 2 for d in json.loads(response.content)["results"])
        return len(queries)

    page_queries(1)  # warms the process's policy and key caches
    assert page_queries(2) == page_queries(8)
