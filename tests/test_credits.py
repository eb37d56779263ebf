"""Credits: the ledger explains every balance, spending never goes negative, refunds follow the rules."""

import os
import signal
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from django.conf import settings
from django.core.management import call_command
from django.test import override_settings
from rest_framework.test import APIClient

from accounts.models import User
from credits.models import EntryType, LedgerEntry
from credits.selectors import credit_balance
from credits.services import credit_adjust, credit_charge, credit_grant, credit_refund
from jobs.models import Job, JobStatus
from jobs.services import jobs_reconcile
from jobsite.errors import InsufficientCredits
from tests.access_helpers import set_policy
from tests.conftest import LocalHTTPServer, auth_headers, respond, run_worker_burst
from tests.job_helpers import assert_ledger_explains_balance, kind_settings, set_balance
from tests.waiting import wait_until

pytestmark = pytest.mark.django_db


def hash_job(data: str) -> dict:
    return {"kind": "hash", "input": {"data": data, "iterations": 1}}


def test_new_users_get_their_credits_once(make_user: Callable[..., User]) -> None:
    user = make_user()
    assert credit_balance(user=user) == settings.NEW_USER_CREDITS > 0
    user.save()
    assert LedgerEntry.objects.filter(account_id=user.pk).count() == 1
    assert_ledger_explains_balance(user)


def test_user_without_account_has_zero_balance_and_402_names_balance_and_cost(
    settings, make_user: Callable[..., User], client_for: Callable[[User], APIClient]
) -> None:
    settings.NEW_USER_CREDITS = 0
    user = make_user()
    api = client_for(user)
    assert credit_balance(user=user) == 0
    assert api.get("/api/v1/credits/").json() == {"balance": 0}
    response = api.post("/api/v1/jobs/sync/", hash_job("x"), format="json")
    assert response.status_code == 402
    problem = response.json()
    assert problem["code"] == "insufficient_credits"
    assert (problem["balance"], problem["cost"]) == (0, 1)
    assert Job.objects.count() == 0 and LedgerEntry.objects.count() == 0  # nothing accepted, nothing written


def test_replayed_posting_key_writes_nothing(user: User) -> None:
    set_balance(user, 10)
    job_id = "7b6f5c1e-0000-4000-8000-000000000001"
    assert credit_charge(user_id=user.pk, amount=3, job_id=job_id) is not None
    assert credit_charge(user_id=user.pk, amount=3, job_id=job_id) is None
    assert credit_refund(job_id=job_id, reason="test") is not None
    assert credit_refund(job_id=job_id, reason="test") is None
    assert credit_grant(user=user, amount=5, reason="r", posting_key="grant:once") is not None
    assert credit_grant(user=user, amount=5, reason="r", posting_key="grant:once") is None
    assert credit_balance(user=user) == 15
    assert LedgerEntry.objects.filter(account_id=user.pk, job_id=job_id).count() == 2
    assert_ledger_explains_balance(user)


def test_refund_of_a_job_never_charged_writes_nothing(user: User) -> None:
    assert credit_refund(job_id="7b6f5c1e-0000-4000-8000-000000000002", reason="test") is None


def test_adjust_cannot_take_the_balance_below_zero(user: User) -> None:
    set_balance(user, 5)
    with pytest.raises(InsufficientCredits):
        credit_adjust(user=user, amount=-6, reason="too much")
    assert credit_balance(user=user) == 5
    assert_ledger_explains_balance(user)


def test_ledger_api_newest_first_with_the_contract_fields(api: APIClient, user: User) -> None:
    set_balance(user, 10)
    job = api.post("/api/v1/jobs/sync/", hash_job("ledger"), format="json").json()
    body = api.get("/api/v1/credits/ledger/?page_size=2").json()
    assert set(body) == {"next", "previous", "results"}
    newest = body["results"][0]
    assert set(newest) == {"id", "type", "amount", "balance_after", "reason", "job", "created_at"}
    assert (newest["type"], newest["amount"], newest["balance_after"], newest["job"]) == ("charge", -1, 9, job["id"])
    assert body["next"]
    assert api.get("/api/v1/credits/").json() == {"balance": 9}


def test_grant_credits_command(user: User) -> None:
    before = credit_balance(user=user)
    call_command("grant_credits", "alice", "25", "--reason", "promo")
    entry = LedgerEntry.objects.filter(account_id=user.pk).first()
    assert (entry.type, entry.amount, entry.reason) == (EntryType.GRANT, 25, "promo")
    assert credit_balance(user=user) == before + 25


def test_admin_grant_action_records_the_staff_user(make_user: Callable[..., User], user: User) -> None:
    staff = make_user("staff", is_staff=True, is_superuser=True)
    client = APIClient()
    client.force_login(staff)
    before = credit_balance(user=user)
    form = {"action": "grant", "_selected_action": [user.pk], "amount": 7, "reason": "goodwill"}
    page = client.post(
        "/admin/credits/creditaccount/", {k: v for k, v in form.items() if k not in ("amount", "reason")}
    )
    assert page.status_code == 200 and b"amount" in page.content  # the intermediate form
    client.post("/admin/credits/creditaccount/", {**form, "apply": "Grant"})
    entry = LedgerEntry.objects.filter(account_id=user.pk).first()
    assert (entry.amount, entry.reason, entry.created_by) == (7, "goodwill", staff)
    assert credit_balance(user=user) == before + 7


@pytest.mark.django_db(transaction=True)
@pytest.mark.slow
def test_200_concurrent_charges_against_100_credits(server_url: str, user: User) -> None:
    set_policy("jobs.sync", max_concurrent_per_user=0)  # the ledger is under test, not the cap
    set_balance(user, 100)
    headers = auth_headers(user)
    with httpx.Client(base_url=server_url, headers=headers, timeout=60, limits=httpx.Limits(max_connections=200)) as c:

        def submit(i: int) -> int:
            return c.post("/api/v1/jobs/sync/", json=hash_job(f"concurrent-{i}")).status_code

        with ThreadPoolExecutor(max_workers=200) as pool:
            codes = list(pool.map(submit, range(200)))
    assert codes.count(200) == 100, codes
    assert codes.count(402) == 100, codes
    assert credit_balance(user=user) == 0
    assert_ledger_explains_balance(user)
    assert LedgerEntry.objects.filter(account_id=user.pk, type=EntryType.CHARGE).count() == 100
    assert Job.objects.filter(owner=user).count() == 100


def test_cache_hit_costs_nothing(api: APIClient, user: User) -> None:
    first = api.post("/api/v1/jobs/sync/", hash_job("cached"), format="json").json()
    before = credit_balance(user=user)
    again = api.post("/api/v1/jobs/sync/", hash_job("cached"), format="json").json()
    assert (first["cached"], again["cached"]) == (False, True)
    assert again["result"] == first["result"] and again["cost"] == 0
    assert credit_balance(user=user) == before
    queued = api.post("/api/v1/jobs/async/", hash_job("cached"), format="json")
    assert queued.status_code == 202 and queued.json()["status"] == "succeeded" and queued.json()["cached"]
    assert credit_balance(user=user) == before


def test_cancel_while_queued_refunds(api: APIClient, user: User) -> None:
    before = credit_balance(user=user)
    job = api.post("/api/v1/jobs/async/", hash_job("cancel me"), format="json").json()
    assert credit_balance(user=user) == before - 1
    assert api.post(f"/api/v1/jobs/{job['id']}/cancel/").status_code == 200
    assert credit_balance(user=user) == before
    types = list(LedgerEntry.objects.filter(job_id=job["id"]).values_list("type", flat=True))
    assert sorted(types) == ["charge", "refund"]
    assert_ledger_explains_balance(user)


def _fetch(api: APIClient, url: str, mode: str = "async") -> dict:
    response = api.post(f"/api/v1/jobs/{mode}/", {"kind": "fetch", "input": {"url": url}}, format="json")
    assert response.status_code in (200, 202, 502), response.content
    return response.json()


@pytest.mark.django_db(transaction=True)
@override_settings(CALLBACK_ALLOW_PRIVATE=True)
def test_time_limit_refunds(api: APIClient, user: User, http_server: Callable[..., LocalHTTPServer]) -> None:
    kind_settings("fetch", time_limit=1, retries=0)
    server = http_server(lambda request: (time.sleep(3), respond(request, 200, b"late")))
    before = credit_balance(user=user)
    job = _fetch(api, server.url)
    run_worker_burst()
    stored = Job.objects.get(pk=job["id"])
    assert (stored.status, stored.error_code) == (JobStatus.FAILED, "time_limit")
    assert credit_balance(user=user) == before
    assert_ledger_explains_balance(user)


@override_settings(CALLBACK_ALLOW_PRIVATE=True, FETCH_MAX_BYTES=10)
def test_callers_bad_input_to_a_kind_that_ran_is_not_refunded(
    api: APIClient, user: User, http_server: Callable[..., LocalHTTPServer]
) -> None:
    server = http_server(lambda request: respond(request, 200, b"x" * 100))
    before = credit_balance(user=user)
    problem = _fetch(api, server.url, mode="sync")
    assert problem["code"] == "job_failed" and problem["error"]["code"] == "response_too_large"
    assert credit_balance(user=user) == before - 2
    assert not LedgerEntry.objects.filter(type=EntryType.REFUND).exists()


@pytest.mark.django_db(transaction=True)
@pytest.mark.slow
@override_settings(RECONCILE_RUNNING_GRACE=0, JOB_MAX_ATTEMPTS=1, CALLBACK_ALLOW_PRIVATE=True)
def test_sigkilled_worker_reaped_by_reconciler_refunds(
    api: APIClient, user: User, start_worker, http_server: Callable[..., LocalHTTPServer]
) -> None:
    kind_settings("fetch", time_limit=1, retries=0)
    server = http_server(lambda request: (time.sleep(30), respond(request, 200, b"late")))
    before = credit_balance(user=user)
    job = _fetch(api, server.url)
    worker = start_worker()
    wait_until(lambda: Job.objects.get(pk=job["id"]).status == JobStatus.RUNNING, timeout=30)
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait()
    assert credit_balance(user=user) == before - 2
    wait_until(lambda: jobs_reconcile()["failed"] == 1, timeout=5, interval=0.1)  # past time_limit + grace
    stored = Job.objects.get(pk=job["id"])
    assert (stored.status, stored.error_code) == (JobStatus.FAILED, "worker_lost")
    assert credit_balance(user=user) == before
    assert_ledger_explains_balance(user)


@pytest.mark.django_db(transaction=True)
@override_settings(CALLBACK_ALLOW_PRIVATE=True)
def test_circuit_open_fails_fast_at_submission_and_refunds_queued_jobs(
    api: APIClient, user: User, http_server: Callable[..., LocalHTTPServer]
) -> None:
    kind_settings("fetch", circuit_threshold=1, circuit_recovery=60, retries=0)
    server = http_server(lambda request: respond(request, 500))
    queued = _fetch(api, server.url)  # accepted and charged while the circuit is still closed
    before = credit_balance(user=user)
    assert _fetch(api, server.url, mode="sync")["error"]["code"] == "upstream_error"  # opens the circuit
    assert credit_balance(user=user) == before  # an upstream failure is not the caller's: refunded

    response = api.post("/api/v1/jobs/sync/", {"kind": "fetch", "input": {"url": server.url}}, format="json")
    assert response.status_code == 503 and response.json()["code"] == "circuit_open"
    assert response["Retry-After"] == "60"
    assert credit_balance(user=user) == before  # nothing charged

    run_worker_burst()
    stored = Job.objects.get(pk=queued["id"])
    assert (stored.status, stored.error_code) == (JobStatus.FAILED, "circuit_open")
    assert credit_balance(user=user) == before + 2  # the queued job's charge came back
    assert_ledger_explains_balance(user)


@pytest.mark.django_db
def test_me_reports_the_balance(user: User, api: APIClient) -> None:
    credit_grant(user=user, amount=5, reason="test", posting_key="me-balance")
    me = api.get("/api/v1/me/").json()
    assert me["balance"] == credit_balance(user=user) == settings.NEW_USER_CREDITS + 5
