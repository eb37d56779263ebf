"""The original backend's API over real HTTP (gunicorn + a real worker with RQ's scheduler), as its clients use it."""

import uuid

import httpx
import pytest
from standardwebhooks.webhooks import Webhook

from credits.models import EntryType, LedgerEntry
from jobs.compat import ANONYMOUS_USERNAME
from jobs.models import Job, JobMode, WebhookSecret
from jobsite import crypto
from tests.access_helpers import open_compat_to_anonymous
from tests.conftest import respond
from tests.waiting import wait_until

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

HELLO_1000 = "1a95c960fe725fd7966a330d086667bfb756e49b60d5b253469e8a5752353a09"
HELLO_INPUT = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"


def test_original_clients_work_unchanged(server_url: str, start_worker, http_server) -> None:
    start_worker("jobs", "callbacks")
    receiver = http_server(lambda request: respond(request, 200, b"thanks"))
    client = httpx.Client(base_url=server_url, timeout=10)
    open_compat_to_anonymous()  # as in the run command's demo; off by default
    wait_until(lambda: client.get("/requests").status_code == 200)

    sync = client.post("/sync", json={"data": "hello", "iterations": 1000})
    assert sync.status_code == 200, sync.text
    body = sync.json()
    assert body["status"] == "success"
    assert set(body["result"]) == {"request_id", "input_hash", "output_hash", "iterations", "processing_time_ms"}
    assert body["result"]["output_hash"] == HELLO_1000 and body["result"]["input_hash"] == HELLO_INPUT

    for bad in ({"data": ""}, {"data": "x", "iterations": 0}, {"iterations": 5}):
        invalid = client.post("/sync", json=bad)
        assert invalid.status_code == 422, bad
        assert invalid.json()["code"] == "validation_error"
    assert client.post("/async", content=b"{oops", headers={"Content-Type": "application/json"}).status_code == 422
    forbidden = client.post("/async", json={"data": "x", "callback_url": "file:///etc/passwd"})
    assert forbidden.status_code == 422 and forbidden.json()["code"] == "callback_url_forbidden"

    accepted = client.post("/async", json={"data": "hello", "iterations": 1000, "callback_url": receiver.url + "/cb"})
    assert accepted.status_code == 200, accepted.text
    assert accepted.json()["status"] == "accepted" and accepted.json()["message"]
    request_id = accepted.json()["request_id"]

    wait_until(lambda: receiver.requests, timeout=30)
    [delivery] = receiver.requests
    assert delivery["path"] == "/cb"
    [secret] = WebhookSecret.objects.filter(user__username=ANONYMOUS_USERNAME)  # created at first delivery
    callback = Webhook(crypto.decrypt(secret.secret_encrypted)).verify(delivery["body"], delivery["headers"])
    assert set(callback) == {"request_id", "status", "result", "error", "timestamp"}
    assert callback["request_id"] == request_id and callback["status"] == "success" and callback["error"] is None
    assert callback["result"]["output_hash"] == HELLO_1000 and callback["result"]["request_id"] == request_id

    listing = client.get("/requests", params={"mode": "async", "limit": 10, "offset": 0}).json()
    assert listing["total"] == 1
    [record] = listing["requests"]
    assert record["request_id"] == request_id and record["status"] == "success" and record["mode"] == "async"
    everything = client.get("/requests").json()
    assert everything["total"] == 2 and len(client.get("/requests", params={"limit": 1}).json()["requests"]) == 1
    assert client.get("/requests", params={"limit": 0}).status_code == 422
    assert client.get("/requests", params={"mode": "bogus"}).status_code == 422

    one = client.get(f"/requests/{request_id}")
    assert one.status_code == 200 and one.json()["result"]["output_hash"] == HELLO_1000
    assert client.get(f"/requests/{uuid.uuid4()}").status_code == 404
    assert client.get("/requests/not-an-id").status_code == 404
    assert client.get("/healthz").json()["status"] in ("healthy", "degraded")

    # the same records as /api/v1/: ordinary jobs under the compat policies, with the delivery recorded
    job = Job.objects.get(pk=request_id)
    assert (job.endpoint, job.mode, job.owner.username) == ("compat.async", JobMode.ASYNC, ANONYMOUS_USERNAME)
    # Anonymous callers have no credits to spend: their jobs are free, so the shared owner never runs dry.
    assert set(Job.objects.filter(owner=job.owner).values_list("cost", flat=True)) == {0}
    assert not LedgerEntry.objects.filter(account_id=job.owner_id, type=EntryType.CHARGE).exists()
    wait_until(lambda: Job.objects.get(pk=request_id).callback_status == "delivered")
    assert list(job.callback_attempts.values_list("n", "status_code")) == [(1, 200)]
