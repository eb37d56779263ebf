"""Scale-out: two web servers and several job and webhook workers, each a separate process started as a separate
host would start it (its own command line, sharing only the database and Redis), under a mixed load of sync and
async jobs with webhooks from several users. Every invariant holds: no job lost, every webhook delivered once,
no balance below zero and every balance explained by its ledger, the per-user sync cap never exceeded.
Throughput against worker count goes to var/tests-<database>/scale-report.json (figures, not assertions: no timed unit tests)."""

import collections
import json
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler
from typing import Any

import httpx
import pytest
from django.test import override_settings
from rq import Worker

from accounts.models import SCOPES, User
from accounts.services import api_key_create
from credits.models import CreditAccount
from credits.selectors import credit_accounts_out_of_balance
from credits.services import credit_grant
from jobs.models import FINAL_STATUSES, CallbackStatus, Job, JobStatus
from jobs.queues import CALLBACKS_QUEUE, JOBS_QUEUE, MAINTENANCE_QUEUE
from jobs.webhooks import webhook_secret_rotate
from jobsite.redis import get_redis
from tests.conftest import TEST_VAR, LocalHTTPServer, gunicorn_server, respond
from tests.waiting import wait_until

USERS = 4
ASYNC_PER_USER = 15
SYNC_PER_USER = 5
CREDITS_PER_USER = 18
"""Fewer credits than jobs submitted (20 a user at cost 1): some submissions must be refused 402, none overdrawn."""


def _receiver() -> tuple[Callable[[BaseHTTPRequestHandler], None], collections.Counter[str]]:
    deliveries: collections.Counter[str] = collections.Counter()
    lock = threading.Lock()

    def handler(request: BaseHTTPRequestHandler) -> None:
        with lock:
            deliveries[request.headers["webhook-id"]] += 1
        respond(request, 204)

    return handler, deliveries


def _run_load(urls: list[str], keys: list[str], callback_url: str) -> list[httpx.Response]:
    def submit(n: int) -> httpx.Response:
        key, url = keys[n % len(keys)], urls[n % len(urls)]
        sync = (n // len(keys)) % 4 == 0  # each user: one job in four sync (5 of 20), the rest async
        body: dict[str, Any] = {"kind": "hash", "input": {"data": f"scale-{n}", "iterations": 2000}}
        if not sync:
            body["callback_url"] = callback_url
        path = "/api/v1/jobs/sync/" if sync else "/api/v1/jobs/async/"
        return httpx.post(f"{url}{path}", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=60)

    total = USERS * (ASYNC_PER_USER + SYNC_PER_USER)
    with ThreadPoolExecutor(max_workers=16) as pool:
        return list(pool.map(submit, range(total)))


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_two_web_servers_and_many_workers_keep_every_invariant(
    make_user: Callable[..., User],
    start_worker: Callable[..., Any],
    http_server: Callable[..., LocalHTTPServer],
) -> None:
    with override_settings(NEW_USER_CREDITS=0):
        users = [make_user(f"scale{n}") for n in range(USERS)]
    for user in users:
        credit_grant(user=user, amount=CREDITS_PER_USER, reason="scale test", posting_key=f"scale:{user.pk}")
        webhook_secret_rotate(user=user)
    keys = [api_key_create(owner=user, name="scale", scopes=list(SCOPES))[1] for user in users]
    handler, deliveries = _receiver()
    receiver = http_server(handler)
    report: dict[str, Any] = {}
    with (
        gunicorn_server("scale-web-1") as web1,  # the tests' admission bound: the whole burst fits the queue
        gunicorn_server("scale-web-2") as web2,
    ):
        for _ in range(3):
            start_worker(JOBS_QUEUE, MAINTENANCE_QUEUE)
        for _ in range(2):
            start_worker(CALLBACKS_QUEUE)
        started = time.monotonic()
        responses = _run_load([web1, web2], keys, f"{receiver.url}/hook")
        accepted = [r.json()["id"] for r in responses if r.status_code in (200, 202)]
        wait_until(
            lambda: not Job.objects.filter(pk__in=accepted).exclude(status__in=FINAL_STATUSES).exists(), timeout=120
        )
        report["mixed_load_jobs_per_second_2_web_3_workers"] = len(accepted) / (time.monotonic() - started)
        async_ids = {str(pk) for pk in Job.objects.filter(pk__in=accepted, mode="async").values_list("pk", flat=True)}
        wait_until(
            lambda: (
                Job.objects.filter(pk__in=async_ids, callback_status=CallbackStatus.DELIVERED).count() == len(async_ids)
            ),
            timeout=120,
        )

    statuses = collections.Counter(r.status_code for r in responses)
    assert set(statuses) <= {200, 202, 402, 429}, statuses
    assert statuses[402] >= 1 and len(accepted) <= USERS * CREDITS_PER_USER
    assert Job.objects.filter(pk__in=accepted, status=JobStatus.SUCCEEDED).count() == len(accepted)  # none lost
    delivery_ids = {str(d) for d in Job.objects.filter(pk__in=async_ids).values_list("delivery_id", flat=True)}
    assert set(deliveries) == delivery_ids and set(deliveries.values()) == {1}  # one delivery per job
    assert credit_accounts_out_of_balance() == 0
    assert not CreditAccount.objects.filter(user__in=users, balance__lt=0).exists()
    for user, key in zip(users, keys, strict=True):
        spent = Job.objects.filter(owner=user, pk__in=accepted).count()
        assert CreditAccount.objects.get(user=user).balance == CREDITS_PER_USER - spent, key[:8]
    (TEST_VAR / "scale-report.json").write_text(json.dumps({**report, "responses": dict(statuses)}, indent=2))


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_throughput_against_worker_count(user: User, start_worker: Callable[..., Any], server_url: str) -> None:
    """Async hash jobs through one web server, drained by 1 then 3 job workers; figures to var/tests-<database>/scale-report.json."""
    key = api_key_create(owner=user, name="bench", scopes=list(SCOPES))[1]
    figures: dict[str, float] = {}
    workers: list[Any] = []
    for count in (1, 3):
        while len(workers) < count:
            workers.append(start_worker(JOBS_QUEUE))
        wait_until(lambda n=count: Worker.count(connection=get_redis()) >= n, timeout=30)
        started = time.monotonic()
        with httpx.Client(base_url=server_url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as client:
            ids = [
                client.post(
                    "/api/v1/jobs/async/",
                    json={"kind": "hash", "input": {"data": f"w{count}-{n}", "iterations": 20000}},
                ).json()["id"]
                for n in range(60)
            ]
        total = len(ids)
        succeeded = Job.objects.filter(pk__in=ids, status=JobStatus.SUCCEEDED)
        wait_until(lambda done=succeeded, total=total: done.count() == total, timeout=120)
        figures[f"jobs_per_second_{count}_workers"] = len(ids) / (time.monotonic() - started)
        assert Job.objects.filter(pk__in=ids).exclude(status=JobStatus.SUCCEEDED).count() == 0
    report_path = TEST_VAR / "scale-report.json"
    report = json.loads(report_path.read_text()) if report_path.exists() else {}
    report_path.write_text(json.dumps({**report, "throughput": figures}, indent=2))
