"""Batches and uploads through the real service: gunicorn, RQ workers, a webhook receiver on 127.0.0.1."""

import json
import socket
import time
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from accounts.models import User
from tests import conftest
from tests.access_helpers import set_policy
from tests.client_helpers import VerifyingReceiver, account_snapshot, jc
from tests.conftest import LocalHTTPServer
from tests.job_helpers import hash_output, set_balance
from tests.waiting import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def api_key(user: User) -> str:
    """A fresh all-scopes API key of the user, for the raw HTTP the client does not speak (a broken chunk)."""
    return conftest.auth_headers(user)["Authorization"].removeprefix("Bearer ")


def test_a_batch_of_20_completes_with_its_counts_results_and_one_signed_webhook(
    client_of: Callable[[User], jc.Client],
    make_user: Callable[..., User],
    start_worker: Callable[..., Any],
    http_server: Callable[..., LocalHTTPServer],
) -> None:
    user = make_user()
    set_balance(user, 100)
    client = client_of(user)
    secret = client.rotate_webhook_secret()
    receiver = VerifyingReceiver(http_server, secret)
    events, refused = receiver.events, receiver.refused
    tag = uuid.uuid4().hex
    requests = [{"kind": "hash", "input": {"data": f"{tag}-{i}", "iterations": 5}} for i in range(20)]
    created = client.submit_batch(requests, callback_url=f"{receiver.url}/hook")
    assert (created.status, created.request_counts.total, created.request_counts.queued) == ("in_progress", 20, 20)
    assert len(created.job_ids) == 20 and created.cost == 20
    assert client.balance().balance == 80
    start_worker("jobs", "callbacks")
    start_worker("jobs")  # two workers finish jobs at once: their counter updates race on the batch row

    done = wait_until(lambda: (batch := client.batch(created.id)).finished and batch, timeout=60)
    assert done.status == "completed"
    assert done.request_counts == jc.RequestCounts(
        total=20, waiting=0, queued=0, running=0, succeeded=20, failed=0, canceled=0
    )
    assert done.in_progress_at is not None and done.completed_at is not None
    assert done.created_at <= done.in_progress_at <= done.completed_at

    jobs = list(client.batch_jobs(created.id, page_size=7))  # three pages
    assert [job.index for job in jobs] == list(range(20))
    assert [job.id for job in jobs] == created.job_ids
    results = list(client.batch_results(created.id))
    assert [(line["index"], line["id"], line["status"], line["error"]) for line in results] == [
        (i, created.job_ids[i], "succeeded", None) for i in range(20)
    ]
    assert all(line["result"]["output_hash"] == hash_output(f"{tag}-{line['index']}", 5) for line in results)

    wait_until(lambda: events, timeout=20)
    time.sleep(1.0)  # a second event would be on its way by now
    assert refused == [] and len(events) == 1
    (event,) = events
    completed = event.batch_completed
    assert completed.type == "batch.completed" and completed.data.id == created.id
    assert completed.data.request_counts.succeeded == 20 and completed.timestamp == completed.data.completed_at
    assert event.id == created.callback.webhook_id
    delivered = wait_until(lambda: (batch := client.batch(created.id)).callback.status == "delivered" and batch)
    assert [(attempt.n, attempt.status_code) for attempt in delivered.callback.attempts] == [(1, 204)]
    assert [batch.id for batch in client.batches()] == [created.id]


def _broken_patch(server_url: str, key: str, path: str, *, offset: int, chunk: bytes) -> None:
    """A PATCH whose connection breaks halfway through its body: the headers announce all of it, half is sent."""
    url = urlsplit(server_url)
    head = (
        f"PATCH {path} HTTP/1.1\r\nHost: {url.netloc}\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: application/offset+octet-stream\r\nUpload-Offset: {offset}\r\n"
        f"Content-Length: {len(chunk)}\r\n\r\n"
    ).encode()
    with socket.create_connection((url.hostname, url.port), timeout=5) as sock:
        sock.sendall(head + chunk[: len(chunk) // 2])
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(5)
        while sock.recv(4096):  # whatever the server makes of it, until it closes
            pass


def test_an_upload_resumes_after_a_broken_connection_and_becomes_a_batch(
    client_of: Callable[[User], jc.Client],
    make_user: Callable[..., User],
    start_worker: Callable[..., Any],
    server_url: str,
) -> None:
    user = make_user()
    set_balance(user, 100)
    client, key = client_of(user), api_key(user)
    tag = uuid.uuid4().hex
    lines = [json.dumps({"kind": "hash", "input": {"data": f"{tag}-{i}", "iterations": 3}}) for i in range(12)]
    data = ("\n".join(lines) + "\n").encode()
    http = httpx.Client(base_url=server_url, headers={"Authorization": f"Bearer {key}"}, timeout=10)
    patch_headers = {"Content-Type": "application/offset+octet-stream"}

    created = http.post("/api/v1/uploads/", headers={"Upload-Length": str(len(data))})
    assert created.status_code == 201, created.text
    upload_path = created.headers["Location"]
    first = http.patch(upload_path, content=data[:100], headers={**patch_headers, "Upload-Offset": "0"})
    assert (first.status_code, first.headers["Upload-Offset"]) == (200, "100")

    _broken_patch(server_url, key, upload_path, offset=100, chunk=data[100:300])
    held = http.head(upload_path)
    assert held.status_code == 200 and held.headers["Cache-Control"] == "no-store"
    offset = int(held.headers["Upload-Offset"])
    assert 100 <= offset < 300  # the chunk that broke is lost (in part at most): the rest resumes from here

    stale = http.patch(upload_path, content=data[100:300], headers={**patch_headers, "Upload-Offset": "100"})
    if offset != 100:  # the server kept what arrived: a client resending from 100 is told where it stands
        assert stale.status_code == 409 and stale.json()["code"] == "upload_offset_mismatch"
        assert stale.headers["Upload-Offset"] == str(offset) == str(stale.json()["offset"])
    wrong = http.patch(upload_path, content=b"x", headers={**patch_headers, "Upload-Offset": "5"})
    assert (wrong.status_code, wrong.json()["code"]) == (409, "upload_offset_mismatch")
    current = int(wrong.headers["Upload-Offset"])

    upload_id = created.json()["id"]
    incomplete = http.post("/api/v1/batches/", json={"upload_id": upload_id})
    assert (incomplete.status_code, incomplete.json()["code"]) == (409, "upload_incomplete")
    done = client.resume_upload(upload_id, data, chunk_size=64)
    assert (done.offset, done.length) == (len(data), len(data)) and current <= done.offset
    past = http.patch(upload_path, content=b"x", headers={**patch_headers, "Upload-Offset": str(len(data))})
    assert past.status_code == 413

    batch = client.submit_batch(upload_id=upload_id)
    assert (batch.request_counts.total, batch.cost) == (12, 12)
    assert http.get(upload_path).status_code == 404  # the batch consumed it
    start_worker("jobs")
    wait_until(lambda: client.batch(batch.id).finished, timeout=60)
    results = list(client.batch_results(batch.id))
    assert [line["result"]["output_hash"] for line in results] == [hash_output(f"{tag}-{i}", 3) for i in range(12)]
    http.close()


def test_uploads_are_size_capped_and_validated_line_by_line(
    client_of: Callable[[User], jc.Client], make_user: Callable[..., User]
) -> None:
    user = make_user()
    set_balance(user, 100)
    client = client_of(user)
    set_policy("jobs.batch", upload_max_bytes=300)
    with pytest.raises(jc.APIError) as too_big:
        client.upload(b"x" * 301)
    assert too_big.value.status == 413

    good = json.dumps({"kind": "hash", "input": {"data": "fine"}})
    data = "\n".join(
        [good, "{not json", json.dumps({"kind": "nope"}), "", good, json.dumps({"kind": "hash", "input": {}})]
    ).encode()
    upload = client.upload(data, chunk_size=50)
    with pytest.raises(jc.ValidationError) as invalid:
        client.submit_batch(upload_id=upload.id)
    fields = sorted({error.field.split(".")[1] for error in invalid.value.problem.errors})
    assert fields == ["2", "3", "6"]  # the blank line 4 is skipped; lines 1 and 5 are fine
    assert {error.field for error in invalid.value.problem.errors} >= {"line.2", "line.3.kind", "line.6.input.data"}
    assert client.balance().balance == 100 and list(client.batches()) == []


def test_a_bad_request_or_a_short_balance_refuses_the_whole_batch_and_changes_nothing(
    client_of: Callable[[User], jc.Client], make_user: Callable[..., User]
) -> None:
    user = make_user()
    set_balance(user, 4)
    client = client_of(user)
    before = account_snapshot(user)
    good = {"kind": "hash", "input": {"data": "ok"}}
    bad = [good, {"kind": "hash", "input": {"data": ""}}, good, {"kind": "nope", "input": {}}, "not an object"]
    with pytest.raises(jc.ValidationError) as invalid:
        client.submit_batch(bad)
    assert [(error.field, error.message != "") for error in invalid.value.errors] == [
        ("requests.1.input.data", True),
        ("requests.3.kind", True),
        ("requests.4", True),
    ]
    with pytest.raises(jc.InsufficientCredits) as short:
        client.submit_batch([good] * 5)
    assert (short.value.status, short.value.body["cost"], short.value.body["balance"]) == (402, 5, 4)
    set_policy("jobs.batch", batch_max_jobs=3)
    with pytest.raises(jc.ValidationError) as too_many:
        client.submit_batch([good] * 4)
    assert too_many.value.errors[0].field == "requests"
    assert account_snapshot(user) == before


def test_cancel_refunds_what_has_not_started_and_the_running_job_finishes(
    client_of: Callable[[User], jc.Client], make_user: Callable[..., User]
) -> None:
    from jobs.execution import job_claim, job_run
    from jobs.models import Job

    user = make_user()
    set_balance(user, 10)
    client = client_of(user)
    created = client.submit_batch([{"kind": "hash", "input": {"data": f"c{i}", "iterations": 2}} for i in range(5)])
    assert client.balance().balance == 5
    running = job_claim(Job.objects.get(pk=created.job_ids[2]).pk, worker_name="test")  # no worker: we run it
    assert running is not None

    canceling = client.cancel_batch(created.id)
    assert canceling.status == "canceling" and canceling.canceled_at is not None
    assert (canceling.request_counts.canceled, canceling.request_counts.running) == (4, 1)
    assert client.balance().balance == 9  # the four unstarted refunded; the running one is still paid for
    with pytest.raises(jc.Conflict):
        client.cancel_batch(created.id)

    job_run(running)
    done = client.batch(created.id)
    assert (done.status, done.request_counts.succeeded, done.request_counts.canceled) == ("canceled", 1, 4)
    assert done.completed_at is not None and done.completed_at >= done.canceled_at
    statuses = [line["status"] for line in client.batch_results(created.id)]
    assert statuses == ["canceled", "canceled", "succeeded", "canceled", "canceled"]


def test_a_batch_is_its_owners_alone(
    client_of: Callable[[User], jc.Client], make_user: Callable[..., User], server_url: str
) -> None:
    owner = client_of(make_user())
    created = owner.submit_batch([{"kind": "hash", "input": {"data": "mine"}}])
    stranger_user = make_user()
    stranger, key = client_of(stranger_user), api_key(stranger_user)
    with pytest.raises(jc.NotFound):
        stranger.batch(created.id)
    with pytest.raises(jc.NotFound):
        stranger.cancel_batch(created.id)
    with pytest.raises(jc.NotFound):
        list(stranger.batch_jobs(created.id))
    with pytest.raises(jc.NotFound):
        list(stranger.batch_results(created.id))
    upload = owner.upload(b'{"kind": "hash", "input": {"data": "x"}}\n')
    with pytest.raises(jc.NotFound):
        stranger.submit_batch(upload_id=upload.id)
    patched = httpx.patch(
        f"{server_url}/api/v1/uploads/{upload.id}/",
        content=b"x",
        headers={
            "Authorization": f"Bearer {key}",
            "Content-Type": "application/offset+octet-stream",
            "Upload-Offset": str(upload.offset),
        },
    )
    assert patched.status_code == 404
    assert list(stranger.batches()) == []


def test_an_idempotency_key_replays_the_batch(
    client_of: Callable[[User], jc.Client], make_user: Callable[..., User]
) -> None:
    client = client_of(make_user())
    requests = [{"kind": "hash", "input": {"data": f"k{i}"}} for i in range(3)]
    first = client.submit_batch(requests, idempotency_key="batch-key-1")
    again = client.submit_batch(requests, idempotency_key="batch-key-1")
    assert (again.id, again.job_ids) == (first.id, first.job_ids)
    assert len(list(client.batches())) == 1
