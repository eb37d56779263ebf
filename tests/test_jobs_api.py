import csv
import io
import json
from collections.abc import Callable

import pytest
from rest_framework.test import APIClient

from accounts.models import EndpointPolicy, User
from jobs.export import CSV_COLUMNS
from jobs.models import Job, JobStatus
from tests.conftest import run_worker_burst

pytestmark = pytest.mark.django_db

HASH = {"kind": "hash", "input": {"data": "hello", "iterations": 1000}}
HELLO_1000 = "1a95c960fe725fd7966a330d086667bfb756e49b60d5b253469e8a5752353a09"


def test_sync_hash_returns_result(api: APIClient) -> None:
    response = api.post("/api/v1/jobs/sync/", HASH, format="json")
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["status"] == "succeeded"
    assert body["mode"] == "sync"
    assert body["result"]["output_hash"] == HELLO_1000
    assert body["started_at"] and body["finished_at"] and body["run_ms"] is not None
    assert Job.objects.get(pk=body["id"]).status == JobStatus.SUCCEEDED


@pytest.mark.django_db(transaction=True)
def test_async_hash_queued_then_succeeded_by_polling(api: APIClient) -> None:
    response = api.post("/api/v1/jobs/async/", HASH, format="json")
    assert response.status_code == 202, response.content
    body = response.json()
    assert body["status"] == "queued"
    assert response["Location"] == f"/api/v1/jobs/{body['id']}/"
    assert api.get(response["Location"]).json()["status"] == "queued"
    run_worker_burst()
    done = api.get(response["Location"]).json()
    assert done["status"] == "succeeded"
    assert done["result"]["output_hash"] == HELLO_1000
    assert done["attempts"] == 1
    assert done["queue_wait_ms"] is not None and done["run_ms"] is not None


@pytest.mark.parametrize(
    "payload,field",
    [
        ({"kind": "nope", "input": {}}, "kind"),
        ({"kind": "hash", "input": {"data": ""}}, "input.data"),
        ({"kind": "hash", "input": {"data": "x", "iterations": 0}}, "input.iterations"),
        ({"kind": "hash", "input": "text"}, "input"),
        ({"kind": "fetch", "input": {"url": "ftp://127.0.0.1/"}}, "input.url"),
        ({"input": {"data": "x"}}, "kind"),
    ],
)
def test_validation_errors_are_problem_json_and_record_nothing(api: APIClient, payload: dict, field: str) -> None:
    for path in ("/api/v1/jobs/sync/", "/api/v1/jobs/async/"):
        response = api.post(path, payload, format="json")
        assert response.status_code == 400
        assert response["Content-Type"] == "application/problem+json"
        problem = response.json()
        assert problem["code"] == "validation_error"
        assert field in [error["field"] for error in problem["errors"]]
    assert Job.objects.count() == 0


def test_malformed_json_is_a_400_not_a_500(api: APIClient) -> None:
    response = api.post("/api/v1/jobs/sync/", data="{not json", content_type="application/json")
    assert response.status_code == 400
    assert response.json()["code"] == "validation_error"


def test_callback_url_only_for_async(api: APIClient) -> None:
    response = api.post("/api/v1/jobs/sync/", {**HASH, "callback_url": "http://127.0.0.1/hook"}, format="json")
    assert response.status_code == 400
    assert response.json()["errors"][0]["field"] == "callback_url"


def test_anonymous_gets_401_problem(db: None) -> None:
    response = APIClient().post("/api/v1/jobs/sync/", HASH, format="json")
    assert response.status_code == 401
    assert response.json()["code"] == "not_authenticated"


def test_other_users_job_is_404(api: APIClient, other_user: User, client_for: Callable[[User], APIClient]) -> None:
    job_id = api.post("/api/v1/jobs/async/", HASH, format="json").json()["id"]
    intruder = client_for(other_user)
    for response in (
        intruder.get(f"/api/v1/jobs/{job_id}/"),
        intruder.post(f"/api/v1/jobs/{job_id}/cancel/"),
    ):
        assert response.status_code == 404
        assert response.json()["code"] == "not_found"
    assert intruder.get("/api/v1/jobs/").json()["results"] == []
    assert intruder.get("/api/v1/jobs/?status=queued&kind=hash&mode=async").json()["results"] == []
    assert intruder.get("/api/v1/jobs/export/?format=jsonl").getvalue() == b""
    assert intruder.get("/api/v1/jobs/export/?format=csv").getvalue().decode().splitlines() == [",".join(CSV_COLUMNS)]
    stats = intruder.post("/api/v1/jobs/sync/", {"kind": "stats", "input": {}}, format="json").json()["result"]
    assert stats["by_kind"] == {"stats": 1}  # only the intruder's own stats job, nothing of the victim's
    assert Job.objects.get(pk=job_id).status == JobStatus.QUEUED
    # The owner still sees and cancels it: the 404s above were about ownership, not a broken job.
    assert api.get(f"/api/v1/jobs/{job_id}/").status_code == 200
    assert api.post(f"/api/v1/jobs/{job_id}/cancel/").status_code == 200


def test_cancel_queued_then_not_cancellable(api: APIClient) -> None:
    job_id = api.post("/api/v1/jobs/async/", HASH, format="json").json()["id"]
    response = api.post(f"/api/v1/jobs/{job_id}/cancel/")
    assert response.status_code == 200
    assert response.json()["status"] == "canceled"
    again = api.post(f"/api/v1/jobs/{job_id}/cancel/")
    assert again.status_code == 409
    assert again.json()["code"] == "not_cancellable"
    run_worker_burst()  # the worker must not run a canceled job
    assert Job.objects.get(pk=job_id).status == JobStatus.CANCELED


def test_list_filters_and_cursor_pagination(api: APIClient) -> None:
    for i in range(5):
        api.post("/api/v1/jobs/sync/", {"kind": "hash", "input": {"data": f"d{i}", "iterations": 1}}, format="json")
    api.post("/api/v1/jobs/async/", HASH, format="json")
    first = api.get("/api/v1/jobs/?page_size=2").json()
    assert len(first["results"]) == 2 and first["next"] and first["previous"] is None
    seen = [job["id"] for job in first["results"]]
    page = first
    while page["next"]:
        page = api.get(page["next"]).json()
        seen += [job["id"] for job in page["results"]]
    assert len(seen) == len(set(seen)) == 6
    assert [job["mode"] for job in api.get("/api/v1/jobs/?mode=async").json()["results"]] == ["async"]
    assert len(api.get("/api/v1/jobs/?status=succeeded&kind=hash").json()["results"]) == 5
    assert api.get("/api/v1/jobs/?status=bogus").status_code == 400
    assert api.get("/api/v1/jobs/?page_size=100000").status_code == 200


def test_export_streams_jsonl_and_csv(api: APIClient) -> None:
    for i in range(3):
        api.post("/api/v1/jobs/sync/", {"kind": "hash", "input": {"data": f"d{i}", "iterations": 1}}, format="json")
    jsonl = api.get("/api/v1/jobs/export/?format=jsonl")
    assert jsonl.status_code == 200 and jsonl.streaming
    rows = [json.loads(line) for line in jsonl.getvalue().decode().splitlines()]
    assert len(rows) == 3 and {row["status"] for row in rows} == {"succeeded"}
    csv_response = api.get("/api/v1/jobs/export/?format=csv")
    assert csv_response["Content-Type"].startswith("text/csv")
    table = list(csv.DictReader(io.StringIO(csv_response.getvalue().decode())))
    assert len(table) == 3 and table[0]["kind"] == "hash"
    assert api.get("/api/v1/jobs/export/?format=xml").status_code == 400


def test_etag_and_304_for_finished_job(api: APIClient) -> None:
    job_id = api.post("/api/v1/jobs/sync/", HASH, format="json").json()["id"]
    first = api.get(f"/api/v1/jobs/{job_id}/")
    etag = first["ETag"]
    assert etag
    cached = api.get(f"/api/v1/jobs/{job_id}/", HTTP_IF_NONE_MATCH=etag)
    assert cached.status_code == 304
    assert api.get(f"/api/v1/jobs/{job_id}/", HTTP_IF_NONE_MATCH='"other"').status_code == 200


@pytest.mark.django_db(transaction=True)
def test_queue_full_is_503_with_retry_after(api: APIClient) -> None:
    EndpointPolicy.objects.update_or_create(name="jobs.async", defaults={"queue_max_depth": 2, "scopes": "jobs:run"})
    assert api.post("/api/v1/jobs/async/", HASH, format="json").status_code == 202
    assert api.post("/api/v1/jobs/async/", HASH, format="json").status_code == 202
    response = api.post("/api/v1/jobs/async/", HASH, format="json")
    assert response.status_code == 503
    assert response.json()["code"] == "queue_full"
    assert int(response["Retry-After"]) == response.json()["retry_after"] >= 1  # the body says when, too
    assert response.json()["limit"] == {"policy": "jobs.async", "queue_max_depth": 2}
    assert Job.objects.count() == 2


def test_stats_counts_own_jobs(api: APIClient, other_user: User, client_for: Callable[[User], APIClient]) -> None:
    api.post("/api/v1/jobs/sync/", HASH, format="json")
    client_for(other_user).post("/api/v1/jobs/sync/", HASH, format="json")
    result = api.post("/api/v1/jobs/sync/", {"kind": "stats", "input": {}}, format="json").json()["result"]
    assert result["by_kind"] == {"hash": 1, "stats": 1}
    assert result["by_status"] == {"succeeded": 1, "running": 1}


def test_openapi_schema_documents_every_endpoint(api: APIClient) -> None:
    schema = api.get("/api/schema/?format=json", HTTP_ACCEPT="application/json")
    assert schema.status_code == 200
    paths = schema.json()["paths"]
    for path in (
        "/api/v1/jobs/",
        "/api/v1/jobs/sync/",
        "/api/v1/jobs/async/",
        "/api/v1/jobs/{job_id}/",
        "/api/v1/jobs/{job_id}/cancel/",
        "/api/v1/jobs/export/",
    ):
        assert path in paths
    headers = {p["name"] for p in paths["/api/v1/jobs/sync/"]["post"]["parameters"] if p["in"] == "header"}
    assert headers == {"Idempotency-Key", "X-MFA-Code"}
    assert api.get("/api/docs/").status_code == 200


def test_unknown_path_is_problem_json(api: APIClient) -> None:
    response = api.get("/api/v1/nothing-here/")
    assert response.status_code == 404
    assert response["Content-Type"] == "application/problem+json"


def test_malformed_cursor_is_a_400_and_an_unknown_one_a_404(api: APIClient) -> None:
    """The schema's pattern decides malformed (400); a well-formed cursor this service never issued names no page."""
    malformed = api.get("/api/v1/jobs/?cursor=not*a*cursor")
    assert malformed.status_code == 400
    assert [error["field"] for error in malformed.json()["errors"]] == ["cursor"]
    for unknown in ("not-a-cursor", "cD1ub3QtYS1kYXRl", "_w=="):  # garbage, "p=not-a-date", bytes that are not ASCII
        response = api.get(f"/api/v1/jobs/?cursor={unknown}")
        assert (response.status_code, response.json()["code"]) == (404, "not_found"), unknown


def test_staff_list_everyone_but_export_their_own(
    api: APIClient, make_user: Callable[..., User], client_for: Callable[[User], APIClient]
) -> None:
    api.post("/api/v1/jobs/sync/", HASH, format="json")
    staff = client_for(make_user("operator", is_staff=True))
    staff.post("/api/v1/jobs/sync/", {"kind": "hash", "input": {"data": "mine"}}, format="json")
    assert len(staff.get("/api/v1/jobs/").json()["results"]) == 2
    exported = [json.loads(line) for line in staff.get("/api/v1/jobs/export/").getvalue().decode().splitlines()]
    assert len(exported) == 1 and exported[0]["input"]["data"] == "mine"
