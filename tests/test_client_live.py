"""jobsite-client against the real service: gunicorn, an RQ worker, a webhook receiver on 127.0.0.1."""

import asyncio
import json
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from accounts.models import User
from credits.services import credit_adjust
from jobs.models import Job
from jobs.services import jobs_purge_expired
from tests import conftest
from tests.access_helpers import set_policy
from tests.client_helpers import VerifyingReceiver, jc
from tests.conftest import LocalHTTPServer
from tests.job_helpers import hash_output
from tests.waiting import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def test_run_sync_and_read_the_account(client_of: Callable[[User], jc.Client], make_user: Callable[..., User]) -> None:
    user = make_user()
    client = client_of(user)
    before = client.balance().balance
    job = client.run("hash", {"data": "hello", "iterations": 10})
    assert (job.status, job.mode, job.kind, job.finished) == ("succeeded", "sync", "hash", True)
    assert job.result is not None and job.result["output_hash"] == hash_output("hello", 10)
    assert job.finished_at is not None and job.created_at <= job.finished_at
    assert client.balance().balance == before - job.cost
    me = client.me()
    assert (me.username, me.balance) == (user.username, before - job.cost)
    assert "jobs:run" in me.scopes
    limits = client.limits()
    assert limits.balance == me.balance
    by_name = {endpoint.name: endpoint for endpoint in limits.endpoints}
    assert by_name["jobs.sync"].concurrency.max_per_user == 4
    assert client.get(job.id) == job


def test_submit_wait_and_a_verified_webhook(
    client_of: Callable[[User], jc.Client],
    make_user: Callable[..., User],
    start_worker: Callable[..., Any],
    http_server: Callable[..., LocalHTTPServer],
) -> None:
    client = client_of(make_user())
    secret = client.rotate_webhook_secret()
    assert secret.startswith("whsec_")
    receiver = VerifyingReceiver(http_server, secret)
    events, refused = receiver.events, receiver.refused
    start_worker("jobs", "callbacks")
    queued = client.submit(
        "hash", {"data": f"webhook-{uuid.uuid4()}", "iterations": 5}, callback_url=f"{receiver.url}/hook"
    )
    assert (queued.mode, queued.status, queued.callback.url) == ("async", "queued", f"{receiver.url}/hook")
    done = client.wait(queued.id, timeout=30)
    assert done.status == "succeeded" and done.result is not None
    wait_until(lambda: events, timeout=20)
    (event,) = events
    assert refused == []
    job = event.job
    assert (job.id, job.status, job.result) == (queued.id, "succeeded", done.result)
    assert event.id == receiver.requests[0]["headers"]["webhook-id"]
    wait_until(lambda: client.get(queued.id).callback.status == "delivered")
    (attempt,) = client.get(queued.id).callback.attempts
    assert (attempt.n, attempt.status_code) == (1, 204)

    # The webhook tools: the delivery log, a redelivery (same webhook-id), a signed test event.
    (delivery,) = client.deliveries(job_id=queued.id)
    assert (delivery.webhook_id, delivery.status, [each.n for each in delivery.attempts]) == (
        event.id,
        "delivered",
        [1],
    )
    assert client.redeliver(queued.id).id == queued.id
    wait_until(lambda: len(events) == 2, timeout=20)
    assert events[1].id == event.id and events[1].job.id == queued.id
    tested = client.test_webhook(f"{receiver.url}/hook")
    assert (tested.status, tested.delivered, tested.status_code) == ("delivered", True, 204)
    assert len(events) == 3 and events[2].data["type"] == "webhook.test" and events[2].id == tested.webhook_id
    assert refused == []


def test_wait_times_out_with_the_last_state_and_cancel_refunds(
    client_of: Callable[[User], jc.Client], make_user: Callable[..., User]
) -> None:
    client = client_of(make_user())  # no worker: the job stays queued
    before = client.balance().balance
    queued = client.submit("hash", {"data": f"cancel-{uuid.uuid4()}", "iterations": 5})
    started = time.monotonic()
    with pytest.raises(jc.WaitTimeout) as timeout:
        client.wait(queued.id, timeout=1.0, poll_interval=0.1)
    assert 1.0 <= time.monotonic() - started < 5 and timeout.value.job.status == "queued"
    canceled = client.cancel(queued.id)
    assert canceled.status == "canceled" and client.balance().balance == before
    with pytest.raises(jc.Conflict) as again:
        client.cancel(queued.id)
    assert (again.value.status, again.value.code) == (409, "not_cancellable")


def test_jobs_iterates_every_page_and_export_streams(
    client_of: Callable[[User], jc.Client], make_user: Callable[..., User]
) -> None:
    client = client_of(make_user())
    ran = [client.run("hash", {"data": f"page-{n}-{uuid.uuid4()}", "iterations": 1}).id for n in range(7)]
    first = client.page(page_size=3)
    assert len(first.results) == 3 and first.next is not None and first.previous is None
    listed = [job.id for job in client.jobs(page_size=3, mode="sync", kind="hash")]
    assert listed == ran[::-1]  # newest first, all 7 across 3 pages, none twice
    assert list(client.jobs(status="queued")) == []
    lines = list(client.export("jsonl"))
    assert sorted(json.loads(line)["id"] for line in lines) == sorted(ran)
    rows = list(client.export("csv"))
    assert "id" in rows[0].split(",") and len(rows) == 8
    with pytest.raises(ValueError):
        list(client.export("xml"))


def test_errors_are_typed(
    server_url: str, client_of: Callable[[User], jc.Client], make_user: Callable[..., User], fresh_policies: None
) -> None:
    user = make_user()
    client = client_of(user)
    with pytest.raises(jc.NotFound) as missing:
        client.get(str(uuid.uuid4()))
    assert (missing.value.status, missing.value.code, missing.value.title) == (404, "not_found", "Not found")
    with pytest.raises(jc.NotFound):
        client.get("../../me")  # escaped: an id never reaches another route

    with pytest.raises(jc.ValidationError) as invalid:
        client.run("hash", {"data": "", "iterations": 0})
    assert invalid.value.status == 400 and {e.field for e in invalid.value.errors} >= {"input.iterations"}

    key = f"k-{uuid.uuid4()}"
    first = client.submit("hash", {"data": "idem", "iterations": 1}, idempotency_key=key)
    assert client.submit("hash", {"data": "idem", "iterations": 1}, idempotency_key=key).id == first.id
    with pytest.raises(jc.IdempotencyError) as reused:
        client.submit("hash", {"data": "other", "iterations": 1}, idempotency_key=key)
    assert (reused.value.status, reused.value.code) == (422, "idempotency_key_reused")

    credit_adjust(user=user, amount=-client.balance().balance, reason="spend it all")
    with pytest.raises(jc.InsufficientCredits) as poor:
        client.run("hash", {"data": "x", "iterations": 1})
    assert (poor.value.status, poor.value.balance, poor.value.cost) == (402, 0, 1)

    set_policy("credits.read", rate_limit_algorithm="fixed_window", rate_limit_key="user", rate_limit=1, rate_window=60)

    def limited() -> jc.RateLimited | None:
        try:
            client.balance()
        except jc.RateLimited as exc:
            return exc
        return None

    error = wait_until(limited)  # the server reads the new policy within POLICY_CHECK_INTERVAL
    assert (error.status, error.code) == (429, "rate_limited") and 0 < error.retry_after <= 60

    wrong = jc.Client(server_url, "jsk_0.wrong")
    with wrong, pytest.raises(jc.AuthenticationFailed) as unauthenticated:
        wrong.me()
    assert unauthenticated.value.code == "not_authenticated"


def test_async_client_shares_the_flows(server_url: str, make_user: Callable[..., User]) -> None:
    key = conftest.auth_headers(make_user())["Authorization"].removeprefix("Bearer ")

    async def scenario() -> tuple[list[jc.Job], list[str], list[jc.Job]]:
        async with jc.AsyncClient(server_url, key) as client:
            ran = list(
                await asyncio.gather(*(client.run("hash", {"data": f"a{n}", "iterations": 2}) for n in range(3)))
            )
            exported = [line async for line in client.export()]
            listed = [job async for job in client.jobs(page_size=2)]
            with pytest.raises(jc.NotFound):
                await client.wait(str(uuid.uuid4()), timeout=1)
            return ran, exported, listed

    ran, exported, listed = asyncio.run(scenario())
    assert all(job.status == "succeeded" for job in ran)
    assert {job.id for job in listed} == {job.id for job in ran} == {json.loads(line)["id"] for line in exported}


def test_the_client_raises_job_expired_for_a_purged_job(server_url: str, user: User, other_user: User) -> None:
    owner_key = conftest.auth_headers(user)["Authorization"].removeprefix("Bearer ")
    other_key = conftest.auth_headers(other_user)["Authorization"].removeprefix("Bearer ")
    with jc.Client(server_url, owner_key) as owner, jc.Client(server_url, other_key) as other:
        job = owner.run("hash", {"data": "client", "iterations": 1})
        assert job.expires_at is not None and job.expires_at > job.finished_at
        Job.objects.filter(pk=job.id).update(expires_at=job.finished_at)
        jobs_purge_expired()
        with pytest.raises(jc.JobExpired) as gone:
            owner.get(job.id)
        assert gone.value.status == 410 and isinstance(gone.value, jc.NotFound)
        with pytest.raises(jc.NotFound) as unknown:
            other.get(job.id)
        assert type(unknown.value) is jc.NotFound
