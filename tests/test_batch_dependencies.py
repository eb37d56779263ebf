"""Dependencies inside batches (issue 20): a batch's request may wait for other requests of the batch (by index)
or for the owner's existing jobs (by id). Through the real service (gunicorn, RQ workers, a webhook receiver on
127.0.0.1) with the Python client; by hand where a step must be taken in-process (a cancel before any worker).
"""

import json
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from accounts.models import User
from credits.models import LedgerEntry
from credits.services import refund_key
from jobs.batches import batches_reconcile
from jobs.models import Batch, BatchStatus, ConcurrencySlot, Job, JobDependency
from tests.access_helpers import set_policy
from tests.client_helpers import account_snapshot, jc
from tests.conftest import LocalHTTPServer, respond, run_worker_burst
from tests.job_helpers import assert_ledger_explains_balance, kind_settings, set_balance
from tests.waiting import wait_until

pytestmark = pytest.mark.django_db(transaction=True)


def _hash(data: str, **extra: Any) -> dict[str, Any]:
    return {"kind": "hash", "input": {"data": data, "iterations": 3}, **extra}


def _later(client: jc.Client, *, hours: float = 1) -> jc.Job:
    """An own job that stays unfinished while the test runs: scheduled an hour ahead."""
    return client.submit("hash", {"data": uuid.uuid4().hex}, run_at=datetime.now(UTC) + timedelta(hours=hours))


@pytest.mark.slow
def test_requests_that_depend_on_each_other_run_in_order_and_wait_without_a_slot(
    client_of: Callable[[User], jc.Client], make_user: Callable[..., User], start_worker: Callable[..., Any]
) -> None:
    user = make_user()
    set_policy("jobs.batch", max_concurrent_per_user=10)
    client = client_of(user)
    # 2 waits for 1, which waits for 0: an index may name a later request too (2 is listed before 1 here).
    created = client.submit_batch([_hash("first"), _hash("third", depends_on=[2]), _hash("second", depends_on=[0])])
    assert created.request_counts == jc.RequestCounts(
        total=3, waiting=2, queued=1, running=0, succeeded=0, failed=0, canceled=0
    )
    ids = created.job_ids
    jobs = {job.index: job for job in client.batch_jobs(created.id)}
    assert [(jobs[i].status, jobs[i].depends_on) for i in range(3)] == [
        ("queued", []),
        ("waiting", [ids[2]]),
        ("waiting", [ids[0]]),
    ]
    assert list(Job.objects.filter(pk__in=ids).order_by("batch_index").values_list("holds_slot", flat=True)) == [
        True,
        False,
        False,
    ]
    assert ConcurrencySlot.objects.get(owner=user, endpoint="jobs.batch").in_use == 1  # the waiting take none yet
    assert set(JobDependency.objects.filter(job_id__in=ids).values_list("job_id", "depends_on_id")) == {
        (uuid.UUID(ids[1]), uuid.UUID(ids[2])),
        (uuid.UUID(ids[2]), uuid.UUID(ids[0])),
    }

    start_worker()
    done = wait_until(lambda: (batch := client.batch(created.id)).finished and batch, timeout=60)
    assert done.request_counts == jc.RequestCounts(
        total=3, waiting=0, queued=0, running=0, succeeded=3, failed=0, canceled=0
    )
    final = {job.index: job for job in client.batch_jobs(created.id)}
    assert final[0].finished_at <= final[2].started_at and final[2].finished_at <= final[1].started_at
    assert ConcurrencySlot.objects.get(owner=user, endpoint="jobs.batch").in_use == 0


@pytest.mark.slow
def test_a_failed_request_fails_its_dependents_refunded_and_the_batch_completes_once(
    client_of: Callable[[User], jc.Client],
    make_user: Callable[..., User],
    start_worker: Callable[..., Any],
    http_server: Callable[..., LocalHTTPServer],
    failing_target: LocalHTTPServer,
) -> None:
    user = make_user()
    set_balance(user, 100)
    client = client_of(user)
    events: list[dict[str, Any]] = []
    lock = threading.Lock()

    def receive(request: BaseHTTPRequestHandler) -> None:
        with lock:
            events.append(receiver.requests[-1])
        respond(request, 204)

    receiver = http_server(receive)
    created = client.submit_batch(
        [
            {"kind": "fetch", "input": {"url": failing_target.url}},
            _hash("after the failure", depends_on=[0]),
            _hash("after its dependent", depends_on=[1]),
            _hash("whatever happens", depends_on=[0], allow_dependency_failure=True),
            _hash("on its own"),
        ],
        callback_url=f"{receiver.url}/hook",
    )
    assert (created.request_counts.waiting, created.request_counts.queued) == (3, 2)
    start_worker("jobs", "callbacks")

    done = wait_until(lambda: (batch := client.batch(created.id)).finished and batch, timeout=60)
    assert done.status == "completed"
    assert done.request_counts == jc.RequestCounts(
        total=5, waiting=0, queued=0, running=0, succeeded=2, failed=3, canceled=0
    )
    results = list(client.batch_results(created.id))
    assert [(line["status"], (line["error"] or {}).get("code")) for line in results] == [
        ("failed", "upstream_error"),
        ("failed", "dependency_failed"),
        ("failed", "dependency_failed"),
        ("succeeded", None),
        ("succeeded", None),
    ]
    assert created.job_ids[0] in results[1]["error"]["message"]
    for index in (1, 2):
        job = Job.objects.get(pk=created.job_ids[index])
        assert (job.started_at, job.attempts) == (None, 0)  # never ran
        assert LedgerEntry.objects.filter(posting_key=refund_key(job.pk), amount=job.cost).count() == 1
    paid = sum(Job.objects.get(pk=created.job_ids[index]).cost for index in (3, 4))
    assert client.balance().balance == 100 - paid  # the fetch (upstream's fault) and both dependents refunded
    assert_ledger_explains_balance(user)

    wait_until(lambda: events, timeout=20)
    time.sleep(1.0)  # a second event would be on its way by now
    assert len(events) == 1 and b'"batch.completed"' in events[0]["body"]


def test_a_cycle_a_bad_index_or_a_foreign_job_refuses_the_whole_batch_and_changes_nothing(
    client_of: Callable[[User], jc.Client], make_user: Callable[..., User]
) -> None:
    user = make_user()
    set_balance(user, 50)
    client = client_of(user)
    own = _later(client)
    foreign = _later(client_of(make_user()))
    before = account_snapshot(user)

    def refused(requests: list[Any]) -> list[tuple[str, str]]:
        with pytest.raises(jc.ValidationError) as invalid:
            client.submit_batch(requests)
        return [(error.field, error.message) for error in invalid.value.errors]

    cycle = refused([_hash("a", depends_on=[2]), _hash("b"), _hash("c", depends_on=[3]), _hash("d", depends_on=[0])])
    assert [field for field, _ in cycle] == ["requests.0.depends_on", "requests.2.depends_on", "requests.3.depends_on"]
    assert all("cycle" in message for _, message in cycle)

    faults = refused(
        [
            _hash("a", depends_on=[5]),
            _hash("b", depends_on=[1]),
            _hash("c", depends_on=[foreign.id, own.id]),
            _hash("d", depends_on=[0, 0]),
            _hash("e", depends_on=[own.id]),
        ]
    )
    assert [field for field, _ in faults] == [f"requests.{i}.depends_on" for i in range(4)]
    assert "index 5" in faults[0][1] and "itself" in faults[1][1] and foreign.id in faults[2][1]
    assert own.id not in faults[2][1] and "once" in faults[3][1]
    malformed = refused([_hash("a", depends_on=[-1, "x", True, 0.5]), _hash("b")])
    assert [field for field, _ in malformed] == [f"requests.0.depends_on.{i}" for i in range(4)]

    lines = [_hash("x", depends_on=[1]), None, _hash("y", depends_on=[0])]  # the blank line 2 is no request
    upload = client.upload(b"\n".join(json.dumps(line).encode() if line else b"" for line in lines))
    with pytest.raises(jc.ValidationError) as by_line:
        client.submit_batch(upload_id=upload.id)
    assert [error.field for error in by_line.value.errors] == ["line.1.depends_on", "line.3.depends_on"]
    assert account_snapshot(user) == before
    assert not Job.objects.get(pk=foreign.id).has_dependents and not Job.objects.get(pk=own.id).has_dependents


@pytest.mark.slow
def test_requests_may_wait_for_own_jobs_final_or_not(
    client_of: Callable[[User], jc.Client], make_user: Callable[..., User], start_worker: Callable[..., Any]
) -> None:
    client = client_of(make_user())
    start_worker()
    done = client.wait(client.submit("hash", {"data": "done before"}).id, timeout=30)
    soon = client.submit("hash", {"data": "soon"}, run_at=datetime.now(UTC) + timedelta(seconds=2))
    created = client.submit_batch(
        [_hash("after a final job", depends_on=[done.id]), _hash("after a scheduled one", depends_on=[soon.id, 0])]
    )
    assert created.request_counts.waiting == 2  # as accepted; the first is released right after
    assert Job.objects.get(pk=soon.id).has_dependents
    finished = wait_until(lambda: (batch := client.batch(created.id)).finished and batch, timeout=60)
    assert finished.request_counts.succeeded == 2
    second = client.get(created.job_ids[1])
    assert second.depends_on == [soon.id, created.job_ids[0]]
    assert client.get(soon.id).finished_at <= second.started_at


def test_a_dependency_on_a_failed_own_job_fails_the_request_at_once_and_cancel_cancels_the_waiting(
    client_of: Callable[[User], jc.Client], make_user: Callable[..., User]
) -> None:
    user = make_user()
    set_balance(user, 50)
    kind_settings("hash", cost=1)
    client = client_of(user)
    gone = client.cancel(_later(client).id)
    created = client.submit_batch(
        [_hash("doomed", depends_on=[gone.id]), _hash("tolerant", depends_on=[gone.id], allow_dependency_failure=True)]
    )
    doomed = client.get(created.job_ids[0])
    assert (doomed.status, doomed.error.code if doomed.error else None) == ("failed", "dependency_failed")
    assert client.get(created.job_ids[1]).status == "queued"  # released at once: its dependency is final

    held = _later(client)
    waiting = client.submit_batch([_hash(f"w{i}", depends_on=[held.id] if i == 0 else [i - 1]) for i in range(3)])
    assert client.balance().balance == 50 - 5  # gone and doomed refunded; tolerant, held and the three paid
    canceled = client.cancel_batch(waiting.id)
    assert (canceled.status, canceled.request_counts.canceled, canceled.request_counts.waiting) == ("canceled", 3, 0)
    assert [line["status"] for line in client.batch_results(waiting.id)] == ["canceled"] * 3  # none failed
    assert client.balance().balance == 50 - 2  # ... and the three canceled refunded
    assert_ledger_explains_balance(user)


def test_the_reconciler_leaves_a_batch_open_while_a_job_of_it_waits(api: APIClient) -> None:
    later = {"kind": "hash", "input": {"data": "later"}, "run_at": (datetime.now(UTC) + timedelta(hours=1)).isoformat()}
    existing = api.post("/api/v1/jobs/async/", later, format="json").json()["id"]
    requests = [_hash("now"), _hash("later", depends_on=[existing])]
    response = api.post("/api/v1/batches/", {"requests": requests}, format="json")
    assert response.status_code == 202, response.content
    run_worker_burst()
    assert batches_reconcile(now=timezone.now() + timedelta(minutes=5))["batches_completed"] == 0
    batch = Batch.objects.get(pk=response.json()["id"])
    assert (batch.status, batch.succeeded, batch.completed_at) == (BatchStatus.IN_PROGRESS, 1, None)
