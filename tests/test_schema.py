"""The published OpenAPI document: generated from the validating serializers, valid, and complete about errors."""

import json
import threading
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from io import StringIO
from typing import Any

import pytest
from django.core.management import call_command
from django.test import Client

from jobs.kinds import KINDS
from jobsite.fields import HTTP_URL_PATTERN
from tests.conftest import gunicorn_server

PROBLEM_REF = "#/components/schemas/Problem"


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    response = Client().get("/api/schema/?format=json")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("application/vnd.oai.openapi+json")
    return json.loads(response.content)


def _operations(schema: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(path, method, op) for path, item in schema["paths"].items() for method, op in item.items()]


def test_schema_validates_without_warnings() -> None:
    call_command("spectacular", "--validate", "--fail-on-warn", stdout=StringIO())


def test_every_error_response_is_problem_json(schema: dict[str, Any]) -> None:
    for path, method, op in _operations(schema):
        errors = {status: response for status, response in op["responses"].items() if int(status) >= 400}
        assert errors, (path, method)
        for status, response in errors.items():
            assert response["content"] == {"application/problem+json": {"schema": {"$ref": PROBLEM_REF}}}, (
                path,
                method,
                status,
            )


def test_no_code_docstring_is_an_operation_description(schema: dict[str, Any]) -> None:
    for path, method, op in _operations(schema):
        assert "An API view governed" not in op.get("description", ""), (path, method)


def test_submissions_are_a_union_on_kind_and_only_async_takes_a_callback_url(schema: dict[str, Any]) -> None:
    components = schema["components"]["schemas"]
    for mode in ("Sync", "Async"):
        union = components[f"{mode}JobRequestRequest"]
        assert union["discriminator"]["propertyName"] == "kind"
        assert set(union["discriminator"]["mapping"]) == set(KINDS)
        for ref in union["oneOf"]:
            variant = components[ref["$ref"].rsplit("/", 1)[1]]
            assert ("callback_url" in variant["properties"]) == (mode == "Async"), ref
    callback_url = components["HashAsyncJobRequestRequest"]["properties"]["callback_url"]
    assert (callback_url["pattern"], callback_url["maxLength"]) == (HTTP_URL_PATTERN, 2048)
    data = components["HashInputRequest"]["properties"]["data"]
    assert (data["type"], data["minLength"], data["maxLength"]) == ("string", 1, 10000) and data["pattern"]
    iterations = components["HashInputRequest"]["properties"]["iterations"]
    assert (iterations["minimum"], iterations["maximum"]) == (1, 1_000_000)


def test_lists_document_their_envelope_and_the_job_its_attempt_log(schema: dict[str, Any]) -> None:
    components = schema["components"]["schemas"]
    for path, name in (("/api/v1/jobs/", "PaginatedJobList"), ("/api/v1/credits/ledger/", "PaginatedLedgerEntryList")):
        ok = schema["paths"][path]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
        assert ok == {"$ref": f"#/components/schemas/{name}"}
        assert set(components[name]["properties"]) == {"next", "previous", "results"}
        cursor = next(p for p in schema["paths"][path]["get"]["parameters"] if p["name"] == "cursor")
        assert cursor["schema"]["pattern"]
    attempt_log = components["Job"]["properties"]["attempt_log"]
    assert attempt_log["type"] == "array" and attempt_log["items"]["$ref"].endswith("/AttemptLogEntry")


def test_idempotency_key_has_its_length_and_charset(schema: dict[str, Any]) -> None:
    header = next(
        p for p in schema["paths"]["/api/v1/jobs/async/"]["post"]["parameters"] if p["name"] == "Idempotency-Key"
    )
    assert header["schema"]["maxLength"] == 255 and header["schema"]["pattern"]


def test_compatible_routes_document_optional_authentication(schema: dict[str, Any]) -> None:
    for path in ("/sync", "/async", "/requests", "/requests/{request_id}"):
        for _, op in schema["paths"][path].items():
            assert {} in op["security"] and {"ApiKey": []} in op["security"], path
    assert {} not in schema["paths"]["/api/v1/jobs/sync/"]["post"]["security"]


def test_webhook_payloads_are_documented(schema: dict[str, Any]) -> None:
    assert schema["openapi"].startswith("3.1")
    job = schema["webhooks"]["jobFinished"]["post"]
    assert job["requestBody"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Job"}
    assert all(header in job["description"] for header in ("webhook-id", "webhook-timestamp", "webhook-signature"))
    assert "compatRequestFinished" in schema["webhooks"]


def test_schema_answers_yaml_by_default() -> None:
    response = Client().get("/api/schema/")
    assert response.status_code == 200 and response.content.startswith(b"openapi:")


@pytest.fixture
def fresh_server(django_db_setup: None, django_db_blocker: Any) -> Iterator[str]:
    """A gunicorn of its own: no request has generated the document in its processes yet."""
    with gunicorn_server("schema-gunicorn") as url:
        yield url


def test_concurrent_first_requests_all_get_the_document(fresh_server: str) -> None:
    # drf-spectacular's generation is not thread-safe (class-level extension registry and stats); a cold
    # process once answered two simultaneous first requests with a 500.
    clients = 16
    start = threading.Barrier(clients)

    def fetch(_: int) -> tuple[int, bytes]:
        start.wait()
        with urllib.request.urlopen(f"{fresh_server}/api/schema/?format=json", timeout=60) as response:
            return response.status, response.read()

    with ThreadPoolExecutor(clients) as pool:
        answers = list(pool.map(fetch, range(clients)))
    assert {status for status, _ in answers} == {200}
    assert len({body for _, body in answers}) == 1
