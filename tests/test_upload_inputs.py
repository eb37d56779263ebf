"""A job's input read from an upload (`upload_id` in place of `hash`'s `data`), through HTTP in process: the same
result and cache entry as inline data, in sync jobs and batches, and every refusal changing nothing."""

from typing import Any

import pytest
from rest_framework.test import APIClient

from accounts.models import User
from credits.selectors import credit_balance
from jobs.models import Job, Upload
from tests.job_helpers import hash_output, kind_settings, set_balance

pytestmark = pytest.mark.django_db(transaction=True)

TEXT = "Größe: ünïcode text\nover two lines\n"
"""An upload's bytes are UTF-8 text: the `data` an inline submission would send."""


def upload(api: APIClient, content: bytes, *, chunk: int = 7, sent: int | None = None) -> str:
    """Announce `content` and send its first `sent` bytes (all by default) in chunks; the upload's id."""
    created = api.post("/api/v1/uploads/", headers={"Upload-Length": str(len(content))})
    assert created.status_code == 201, created.content
    upload_id = str(created.json()["id"])
    end = len(content) if sent is None else sent
    for offset in range(0, end, chunk):
        patched = api.generic(
            "PATCH",
            f"/api/v1/uploads/{upload_id}/",
            content[offset : min(offset + chunk, end)],
            content_type="application/offset+octet-stream",
            headers={"Upload-Offset": str(offset)},
        )
        assert patched.status_code == 200, patched.content
    return upload_id


def sync(api: APIClient, job_input: dict[str, Any]) -> Any:
    return api.post("/api/v1/jobs/sync/", {"kind": "hash", "input": job_input}, format="json")


def test_a_sync_job_from_a_chunked_upload_has_the_result_of_inline_data_and_consumes_the_upload(
    api: APIClient, user: User
) -> None:
    set_balance(user, 10)
    upload_id = upload(api, TEXT.encode())
    answered = sync(api, {"upload_id": upload_id, "iterations": 5})
    assert answered.status_code == 200, answered.content
    job = answered.json()
    assert (job["cost"], credit_balance(user=user)) == (1, 9)
    kind_settings("hash", cache_algorithm="none")  # the inline job below runs too
    inline = sync(api, {"data": TEXT, "iterations": 5}).json()
    assert (inline["cached"], job["result"]) == (False, inline["result"])
    assert job["result"]["output_hash"] == hash_output(TEXT, 5)
    assert job["input"] == {"data": TEXT, "iterations": 5}  # the job holds its own copy
    assert api.get(f"/api/v1/uploads/{upload_id}/").status_code == 404
    again = sync(api, {"upload_id": upload_id})
    assert (again.status_code, again.json()["code"]) == (404, "not_found")


def test_the_cache_keys_on_the_uploads_content_not_its_id(api: APIClient, user: User) -> None:
    set_balance(user, 10)
    kind_settings("hash", cache_algorithm="lru", cache_capacity=10, cache_ttl=60)
    first = sync(api, {"data": TEXT, "iterations": 7}).json()
    from_upload = sync(api, {"upload_id": upload(api, TEXT.encode()), "iterations": 7}).json()
    assert (first["cached"], from_upload["cached"]) == (False, True)
    assert from_upload["result"] == first["result"]
    other = sync(api, {"upload_id": upload(api, b"other text"), "iterations": 7}).json()
    assert other["cached"] is False and other["result"]["output_hash"] == hash_output("other text", 7)


def test_a_batch_item_may_name_an_upload_and_the_batch_consumes_it(api: APIClient, user: User) -> None:
    set_balance(user, 10)
    upload_id = upload(api, TEXT.encode())
    requests = [
        {"kind": "hash", "input": {"upload_id": upload_id, "iterations": 2}},
        {"kind": "hash", "input": {"upload_id": upload_id, "iterations": 3}},  # one upload, two jobs
        {"kind": "hash", "input": {"data": "inline", "iterations": 2}},
    ]
    created = api.post("/api/v1/batches/", {"requests": requests}, format="json")
    assert created.status_code == 202, created.content
    jobs = {job.batch_index: job for job in Job.objects.filter(batch_id=created.json()["id"])}
    assert [api.get(f"/api/v1/jobs/{jobs[i].id}/").json()["input"] for i in range(3)] == [
        {"data": TEXT, "iterations": 2},
        {"data": TEXT, "iterations": 3},
        {"data": "inline", "iterations": 2},
    ]
    assert not Upload.objects.filter(pk=upload_id).exists()


def _refused(api: APIClient, user: User, job_input: dict[str, Any], *, batch: bool = False) -> tuple[int, Any]:
    """Submit (async, or as a batch's one item) and check nothing changed: balance, jobs, uploads."""
    before = (credit_balance(user=user), Job.objects.count(), Upload.objects.count())
    body = {"kind": "hash", "input": job_input}
    if batch:
        answered = api.post("/api/v1/batches/", {"requests": [body]}, format="json")
    else:
        answered = api.post("/api/v1/jobs/async/", body, format="json")
    assert (credit_balance(user=user), Job.objects.count(), Upload.objects.count()) == before
    problem = answered.json()
    return answered.status_code, (problem["code"], [error["field"] for error in problem.get("errors", [])])


@pytest.mark.parametrize("batch", [False, True], ids=["async", "batch"])
def test_foreign_incomplete_missing_or_unfit_uploads_are_refused_and_nothing_is_charged(
    api: APIClient, user: User, other_user: User, client_for: Any, batch: bool
) -> None:
    set_balance(user, 10)
    prefix = "requests.0." if batch else ""
    foreign = upload(client_for(other_user), b"theirs")
    incomplete = upload(api, b"half of it", sent=4)
    assert _refused(api, user, {"upload_id": foreign}, batch=batch) == (404, ("not_found", []))
    assert _refused(api, user, {"upload_id": incomplete}, batch=batch) == (409, ("upload_incomplete", []))
    missing = "6f1c1d6e-0000-4000-8000-000000000000"
    assert _refused(api, user, {"upload_id": missing}, batch=batch) == (404, ("not_found", []))
    both = {"upload_id": upload(api, b"x"), "data": "x"}
    assert _refused(api, user, both, batch=batch) == (400, ("validation_error", [f"{prefix}input.upload_id"]))
    assert _refused(api, user, {"iterations": 3}, batch=batch) == (400, ("validation_error", [f"{prefix}input.data"]))
    not_utf8 = upload(api, "latin-1 bytes: é".encode("latin-1"))
    assert _refused(api, user, {"upload_id": not_utf8}, batch=batch) == (
        400,
        ("validation_error", [f"{prefix}input.upload_id"]),
    )
    blank = upload(api, b" \n\t ")
    assert _refused(api, user, {"upload_id": blank}, batch=batch) == (
        400,
        ("validation_error", [f"{prefix}input.upload_id"]),
    )
    too_long = upload(api, b"a" * 10_001, chunk=4096)  # hash's data holds at most 10 000 characters
    assert _refused(api, user, {"upload_id": too_long}, batch=batch) == (413, ("payload_too_large", []))
    too_many_bytes = upload(api, b"a" * 40_001, chunk=8192)  # refused before it is read
    assert _refused(api, user, {"upload_id": too_many_bytes}, batch=batch) == (413, ("payload_too_large", []))
    refused_bad_iterations = {"upload_id": upload(api, b"fine"), "iterations": 0}
    assert _refused(api, user, refused_bad_iterations, batch=batch) == (
        400,
        ("validation_error", [f"{prefix}input.iterations"]),
    )


def test_a_short_balance_refuses_the_job_and_keeps_the_upload_for_another_try(api: APIClient, user: User) -> None:
    set_balance(user, 0)
    upload_id = upload(api, b"kept")
    assert _refused(api, user, {"upload_id": upload_id}) == (402, ("insufficient_credits", []))
    set_balance(user, 1)
    accepted = api.post("/api/v1/jobs/async/", {"kind": "hash", "input": {"upload_id": upload_id}}, format="json")
    assert accepted.status_code == 202, accepted.content
    assert accepted.json()["input"]["data"] == "kept"
    assert not Upload.objects.filter(pk=upload_id).exists()


def test_kinds_without_an_upload_field_take_no_upload_id(api: APIClient, user: User) -> None:
    upload_id = upload(api, b"[1, 2, 3]")
    answered = api.post("/api/v1/jobs/sync/", {"kind": "stats", "input": {"upload_id": upload_id}}, format="json")
    # stats takes no parameters (figures over the caller's own jobs): unknown input fields are ignored, as before
    assert (answered.status_code, answered.json()["input"]) == (200, {}), answered.content
    assert Upload.objects.filter(pk=upload_id).exists()
