"""Every error of the service answers problem+json with a filled title, whatever Django or DRF raised it."""

import json
from typing import Any

import pytest
from django.test import Client
from django.test.utils import override_settings
from rest_framework.test import APIClient

from accounts.models import User

HASH = {"kind": "hash", "input": {"data": "hello", "iterations": 1}}


def _problem(response: Any, status: int, code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.content[:300]
    assert response["Content-Type"] == "application/problem+json", response["Content-Type"]
    body = json.loads(response.content)
    assert body["status"] == status and body["title"] and "{" not in body["title"], body
    if code:
        assert body["code"] == code, body
    assert not response.cookies, response.cookies
    return body


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["/api/v1/me/", "/api/v1/jobs/", "/api/v1/credits/", "/sync"])
def test_a_browser_refused_gets_a_401_not_a_500(path: str) -> None:
    from accounts.models import EndpointPolicy
    from accounts.policies import ENDPOINT_DEFAULTS

    EndpointPolicy.objects.update_or_create(
        name="compat.sync", defaults={**ENDPOINT_DEFAULTS["compat.sync"], "auth_required": True}
    )
    method = Client().post if path == "/sync" else Client().get
    _problem(method(path, HTTP_ACCEPT="text/html"), 401, "not_authenticated")


@pytest.mark.django_db
@pytest.mark.parametrize(
    "path, status",
    [("/api/v1/jobs/async", 202), ("/api/v1/jobs/sync", 200), ("/sync/", 200), ("/api/v1/jobs/sync/", 200)],
)
def test_every_route_answers_with_or_without_its_trailing_slash(api: APIClient, path: str, status: int) -> None:
    body = HASH if path.startswith("/api") else HASH["input"]
    response = api.post(path, body, format="json")
    assert response.status_code == status, response.content[:300]


@pytest.mark.django_db
def test_a_get_without_its_slash_is_served_not_redirected(api: APIClient) -> None:
    assert api.get("/api/v1/me").status_code == 200
    assert api.get("/api/v1/credits/ledger").status_code == 200


@pytest.mark.django_db
@override_settings(DEBUG=True)
@pytest.mark.parametrize("path", ["/api/v1/jobs/not-a-uuid/", "/api/v1/nothing/", "/nothing", "/api-auth/nothing/"])
def test_unknown_paths_are_problem_404s_even_with_debug_on(api: APIClient, path: str) -> None:
    _problem(api.get(path), 404, "not_found")


@pytest.mark.django_db
def test_an_unsupported_method_is_a_problem_405(api: APIClient) -> None:
    body = _problem(api.delete("/api/v1/jobs/"), 405, "method_not_allowed")
    assert body["title"] == "Method not allowed" and "DELETE" in body["detail"]


@pytest.mark.django_db
@pytest.mark.parametrize("content_type", [None, "application/x-www-form-urlencoded", "text/plain"])
def test_a_body_that_is_not_json_gets_415_naming_json(api: APIClient, content_type: str | None) -> None:
    extra = {"CONTENT_TYPE": content_type} if content_type else {}
    request = api.generic("POST", "/api/v1/jobs/sync/", json.dumps(HASH), **extra)
    if content_type is None:  # the test client always sends one; a raw client may send none
        request = api.generic("POST", "/api/v1/jobs/sync/", json.dumps(HASH), content_type="")
    body = _problem(request, 415, "unsupported_media_type")
    assert "application/json" in body["detail"] and body["title"] == "Unsupported media type"


@pytest.mark.django_db
def test_an_unknown_kind_lists_the_valid_kinds(api: APIClient) -> None:
    body = _problem(api.post("/api/v1/jobs/sync/", {"kind": "nope"}, format="json"), 400, "validation_error")
    assert body["errors"][0]["field"] == "kind"
    assert all(kind in body["errors"][0]["message"] for kind in ("hash", "fetch", "stats"))


@pytest.mark.django_db
@pytest.mark.parametrize("depth", [40, 100_000])
def test_deeply_nested_json_is_a_400(api: APIClient, depth: int) -> None:
    body = '{"kind": "hash", "input": {"data": "x", "deep": ' + "[" * depth + "]" * depth + "}}"
    _problem(api.generic("POST", "/api/v1/jobs/sync/", body, content_type="application/json"), 400)


@pytest.mark.django_db
def test_a_huge_requests_offset_is_a_422(api: APIClient) -> None:
    _problem(api.get("/requests?offset=9223372036854775808"), 422, "validation_error")


@pytest.mark.django_db
@override_settings(DATA_UPLOAD_MAX_MEMORY_SIZE=1000)
def test_a_body_over_the_upload_limit_is_a_problem_413(api: APIClient) -> None:
    big = {"kind": "hash", "input": {"data": "x" * 2000}}
    body = _problem(api.post("/api/v1/jobs/sync/", big, format="json"), 413, "payload_too_large")
    assert body["limit"] == 1000


@pytest.mark.django_db
@override_settings(DEBUG=True)
def test_a_disallowed_host_is_a_problem_400() -> None:
    _problem(Client().get("/api/v1/me/", HTTP_HOST="evil.example"), 400, "bad_request")


@pytest.mark.django_db
def test_a_csrf_failure_on_the_api_login_is_a_problem_403(make_user: Any) -> None:
    make_user("carol")
    response = Client(enforce_csrf_checks=True).post("/api-auth/login/", {"username": "carol", "password": "pw"})
    _problem(response, 403, "csrf_failed")


@pytest.mark.django_db
def test_api_responses_set_no_cookies_for_a_session_user(user: User) -> None:
    browser = Client()
    browser.force_login(user)
    for response in (browser.get("/api/v1/me/"), browser.get("/api/v1/jobs/?status=bogus"), browser.get("/nothing")):
        assert response.status_code in (200, 400, 404) and not response.cookies, response.cookies


@pytest.mark.django_db(transaction=True)
def test_a_database_out_of_connections_is_a_503_not_a_500(api: APIClient) -> None:
    from django.db import connection

    connection.close()
    real = connection.settings_dict.copy()
    connection.settings_dict["NAME"] = "/nonexistent/dir/db.sqlite3" if connection.vendor == "sqlite" else "no_such_db"
    try:
        body = _problem(api.get("/api/v1/credits/"), 503, "service_unavailable")
    finally:
        connection.close()
        connection.settings_dict.update(real)
    assert "database" in body["detail"]


@pytest.mark.django_db
def test_too_many_query_fields_is_a_problem_400(api: APIClient) -> None:
    query = "&".join(f"page_size={i}" for i in range(1100))
    _problem(api.get(f"/api/v1/credits/ledger/?{query}"), 400, "bad_request")
