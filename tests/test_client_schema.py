"""jobsite-client without a server: its models against the published OpenAPI schema, its error mapping,
its webhook verification."""

import base64
import json
import secrets
import sys
import time
import types
from collections.abc import Callable
from dataclasses import MISSING, fields
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler
from typing import Any, Union, get_args, get_origin, get_type_hints

import pytest
from django.test import Client as DjangoClient
from standardwebhooks import Webhook

from tests.conftest import ROOT, LocalHTTPServer, respond

sys.path.insert(0, str(ROOT / "jobsite-client"))  # until requirements-dev installs ./jobsite-client

import jobsite_client as jc
from jobsite_client.errors import ERROR_CLASSES, error_for

COMPONENTS: dict[type, str] = {
    jc.Job: "Job",
    jc.JobError: "JobError",
    jc.Callback: "JobCallback",
    jc.Progress: "JobProgress",
    jc.JobEvent: "JobEvent",
    jc.JobWebhookEvent: "JobWebhookEvent",
    jc.CallbackAttempt: "CallbackAttempt",
    jc.AttemptLogEntry: "AttemptLogEntry",
    jc.JobPage: "PaginatedJobList",
    jc.Problem: "Problem",
    jc.FieldError: "ProblemFieldError",
    jc.Balance: "Balance",
    jc.Me: "Me",
    jc.Limits: "Limits",
    jc.EndpointLimits: "_EndpointLimits",
    jc.RateLimitState: "_RateLimitState",
    jc.Concurrency: "_Concurrency",
    jc.WebhookSecret: "WebhookSecret",
    jc.WebhookDelivery: "WebhookDelivery",
    jc.WebhookDeliveryPage: "PaginatedWebhookDeliveryList",
    jc.WebhookTestResult: "WebhookTestResult",
    jc.Batch: "Batch",
    jc.BatchCreated: "BatchCreated",
    jc.RequestCounts: "RequestCounts",
    jc.BatchCallback: "BatchCallback",
    jc.BatchPage: "PaginatedBatchList",
    jc.BatchJob: "BatchJob",
    jc.BatchJobPage: "PaginatedBatchJobList",
    jc.Upload: "Upload",
    jc.BatchCompletedEvent: "BatchCompletedEvent",
}
"""Each client model and the schema component it mirrors."""


@pytest.fixture(scope="module")
def components() -> dict[str, Any]:
    response = DjangoClient().get("/api/schema/?format=json")
    assert response.status_code == 200
    return json.loads(response.content)["components"]["schemas"]


def _nullable(prop: dict[str, Any]) -> bool:
    kinds = prop.get("type")
    alternatives = prop.get("oneOf", []) + prop.get("anyOf", [])
    return (isinstance(kinds, list) and "null" in kinds) or {"type": "null"} in alternatives


def _optional_hint(hint: Any) -> bool:
    return get_origin(hint) in (Union, types.UnionType) and type(None) in get_args(hint)


@pytest.mark.parametrize("model", list(COMPONENTS), ids=lambda model: model.__name__)
def test_model_matches_its_schema_component(model: type, components: dict[str, Any]) -> None:
    """Fails when the service adds, drops, renames a member, or changes whether it is required or nullable."""
    schema = components[COMPONENTS[model]]
    hints = get_type_hints(model)
    declared = {f.name: f for f in fields(model)}
    assert set(declared) == set(schema["properties"]), "members differ from the schema"
    required = {name for name, f in declared.items() if f.default is MISSING and f.default_factory is MISSING}
    assert required == set(schema.get("required", [])), "required members differ from the schema"
    for name, prop in schema["properties"].items():
        # An optional member may default to None when absent; a required one is None only where nullable.
        expected = _nullable(prop) or (name not in required and declared[name].default is None)
        assert _optional_hint(hints[name]) == expected, f"{name}: nullability differs from the schema"


def test_every_model_of_the_api_is_mirrored(components: dict[str, Any]) -> None:
    """The schemas a client reads (not request bodies, enums, compat routes) all have a model."""
    read = {name for name in components if not name.endswith(("Request", "Enum")) and not name.startswith("Compat")}
    unmirrored = {"LedgerEntry", "PaginatedLedgerEntryList", "MfaStatus", "TotpEnrolment", "Token"}
    assert read - unmirrored == set(COMPONENTS.values())


def test_every_mapped_code_is_a_documented_one() -> None:
    documented = (ROOT / "docs" / "api.md").read_text()
    for code in ERROR_CLASSES:
        assert f"`{code}`" in documented, f"{code} is not a documented code"
    for code in ("validation_error", "insufficient_credits", "rate_limited", "not_found", "idempotency_key_reused"):
        assert code in ERROR_CLASSES


def test_error_for_carries_the_problem_members() -> None:
    error = error_for(
        402,
        {
            "type": "urn:jobsite:problem:insufficient_credits",
            "title": "Insufficient credits",
            "status": 402,
            "detail": "Not enough credits.",
            "code": "insufficient_credits",
            "balance": 0,
            "cost": 3,
            "extra": 1,
        },
        None,
    )
    assert isinstance(error, jc.InsufficientCredits) and isinstance(error, jc.JobsiteError)
    assert (error.status, error.code, error.balance, error.cost, error.body["extra"]) == (
        402,
        "insufficient_credits",
        0,
        3,
        1,
    )
    limited = error_for(429, {"code": "rate_limited", "title": "t", "detail": "d", "type": "x"}, "7")
    assert isinstance(limited, jc.RateLimited) and limited.retry_after == 7
    unknown = error_for(409, {"code": "a_newer_code", "title": "t", "detail": "d", "type": "x"}, None)
    assert type(unknown) is jc.Conflict and unknown.code == "a_newer_code"
    not_json = error_for(502, None, None)
    assert type(not_json) is jc.APIError and not_json.status == 502 and not_json.code == ""


# --- webhooks -------------------------------------------------------------------------------------


def _secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


def _signed(secret: str, body: bytes, *, at: datetime | None = None, msg_id: str = "msg_1") -> dict[str, str]:
    at = at or datetime.now(tz=UTC)
    return {
        "Webhook-Id": msg_id,
        "Webhook-Timestamp": str(int(at.timestamp())),
        "Webhook-Signature": Webhook(secret).sign(msg_id, at, body.decode()),
    }


def test_verify_webhook_returns_the_event_and_refuses_forgeries() -> None:
    secret = _secret()
    body = json.dumps({"id": "job-1", "status": "succeeded"}).encode()
    event = jc.verify_webhook(body, _signed(secret, body), secret)
    assert (event.id, event.data) == ("msg_1", {"id": "job-1", "status": "succeeded"})
    assert abs((datetime.now(tz=UTC) - event.timestamp).total_seconds()) < 5
    refused = {
        "wrong secret": (body, _signed(_secret(), body), secret),
        "tampered body": (body.replace(b"job-1", b"job-2"), _signed(secret, body), secret),
        "stale timestamp": (body, _signed(secret, body, at=datetime.now(tz=UTC) - timedelta(minutes=6)), secret),
        "future timestamp": (body, _signed(secret, body, at=datetime.now(tz=UTC) + timedelta(minutes=6)), secret),
        "no headers": (body, {}, secret),
        "malformed signature": (body, {**_signed(secret, body), "Webhook-Signature": "v1"}, secret),
        "not base64 secret": (body, _signed(secret, body), "whsec_%%%"),
        "not an object": (b"[1]", _signed(secret, b"[1]"), secret),
    }
    for case, (payload, headers, key) in refused.items():
        with pytest.raises(jc.InvalidWebhook):
            jc.verify_webhook(payload, headers, key)
            pytest.fail(case)


# --- polling, against a stand-in server that says what the real one may ------------------------------


def _job(status: str) -> dict[str, Any]:
    return {
        "id": "3f0c1f9e-0000-4000-8000-000000000001",
        "kind": "hash",
        "mode": "async",
        "priority": "normal",
        "status": status,
        "input": {"data": "x"},
        "result": None,
        "error": None,
        "cost": 1,
        "attempts": 0,
        "attempt_log": [],
        "cached": False,
        "created_at": "2026-01-01T00:00:00Z",
        "started_at": None,
        "finished_at": None,
        "queue_wait_ms": None,
        "run_ms": None,
        "expires_at": None,
        "run_at": None,
        "depends_on": [],
        "allow_dependency_failure": False,
        "progress": None,
        "callback": {"url": "", "status": "none", "attempts": [], "events": []},
        "a_member_from_a_newer_service": True,
    }


def _polled(http_server: Callable[..., LocalHTTPServer], headers: dict[str, str]) -> tuple[jc.Job, list[float]]:
    """wait() against a server answering queued (with `headers`) once, then succeeded; when each poll came."""
    polls: list[float] = []

    def answer(request: BaseHTTPRequestHandler) -> None:
        polls.append(time.monotonic())
        body = json.dumps(_job("queued" if len(polls) == 1 else "succeeded")).encode()
        respond(request, 200, body, {"Content-Type": "application/json", **(headers if len(polls) == 1 else {})})

    server = http_server(answer)
    with jc.Client(server.url, "jsk_test.key") as client:
        job = client.wait(_job("queued")["id"], timeout=10, poll_interval=3)
    (first, *_) = server.requests  # Prefer: the whole seconds left of the timeout
    assert first["path"] == f"/api/v1/jobs/{job.id}/" and first["headers"]["Prefer"] in ("wait=9", "wait=10")
    assert first["headers"]["Authorization"] == "Bearer jsk_test.key"
    return job, polls


def test_wait_honours_retry_after(http_server: Callable[..., LocalHTTPServer]) -> None:
    job, polls = _polled(http_server, {"Retry-After": "1"})
    assert job.status == "succeeded" and len(polls) == 2
    assert 1.0 <= polls[1] - polls[0] < 2.5  # Retry-After (1 s), not the 3 s poll interval


def test_wait_polls_again_at_once_when_the_server_held_the_request(
    http_server: Callable[..., LocalHTTPServer],
) -> None:
    job, polls = _polled(http_server, {"Preference-Applied": "wait=10"})
    assert job.finished and polls[1] - polls[0] < 1.0  # no 3 s pause: the server already waited
