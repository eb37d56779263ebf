"""Circuit breaker shared by every process, and retries with backoff, against a local server that fails on command."""

import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler

import pytest
from rest_framework.test import APIClient
from rq.job import Job as RQJob

from credits.selectors import credit_balance, ledger_sum
from jobs import queues, ssrf
from jobs.circuit import CircuitState, circuit_acquire, circuit_record, circuit_states
from jobs.kind_settings import get_kind_settings
from jobs.models import Job, JobStatus, KindSettings
from tests.conftest import LocalHTTPServer, respond
from tests.job_helpers import kind_settings
from tests.waiting import wait_until
from tests.webhook_helpers import FakeDNS

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _local_fetch_targets(settings) -> None:
    settings.CALLBACK_ALLOW_PRIVATE = True  # the failing upstream is a server on 127.0.0.1


def _wait_half_open(breaker: KindSettings, host: str) -> None:
    """Until the recovery period has passed (asking without taking the trial changes nothing)."""
    wait_until(lambda: circuit_acquire(breaker, host, take_trial=False) == CircuitState.HALF_OPEN, timeout=5)


def test_half_open_admits_one_trial_and_a_success_closes() -> None:
    breaker = KindSettings(kind="fetch", circuit_threshold=2, circuit_recovery=1, time_limit=30)
    host = "upstream.test"
    circuit_record(breaker, host, failed=True)
    assert circuit_acquire(breaker, host, take_trial=False) == CircuitState.CLOSED
    circuit_record(breaker, host, failed=True)
    assert circuit_acquire(breaker, host, take_trial=False) == CircuitState.OPEN
    _wait_half_open(breaker, host)
    assert circuit_acquire(breaker, host, take_trial=True) == CircuitState.TRIAL
    assert circuit_acquire(breaker, host, take_trial=True) == CircuitState.OPEN  # one trial at a time
    circuit_record(breaker, host, failed=True)  # the trial failed: open again for a full recovery period
    assert circuit_acquire(breaker, host, take_trial=False) == CircuitState.OPEN
    _wait_half_open(breaker, host)
    assert circuit_acquire(breaker, host, take_trial=True) == CircuitState.TRIAL
    circuit_record(breaker, host, failed=False)
    assert circuit_acquire(breaker, host, take_trial=True) == CircuitState.CLOSED
    assert circuit_acquire(breaker, "other.test", take_trial=True) == CircuitState.CLOSED


class Upstream:
    """A fetch target: fails (500, after a pause so that jobs overlap) while `failing`, else answers 200."""

    def __init__(self) -> None:
        self.failing = True

    def __call__(self, request: BaseHTTPRequestHandler) -> None:
        if self.failing:
            time.sleep(0.3)
            respond(request, 500)
        else:
            respond(request, 200, b"ok")


def _submit(api: APIClient, url: str):
    return api.post("/api/v1/jobs/async/", {"kind": "fetch", "input": {"url": url}}, format="json")


def _final(job_id: str) -> Job:
    return wait_until(lambda: (job := Job.objects.get(pk=job_id)).is_final and job, timeout=30)


@pytest.mark.django_db(transaction=True)
@pytest.mark.slow
def test_circuit_opens_across_two_workers_fails_fast_half_opens_and_closes(
    api: APIClient, start_worker, http_server: Callable[..., LocalHTTPServer]
) -> None:
    kind_settings("fetch", circuit_threshold=3, circuit_recovery=2, retries=0)
    upstream = Upstream()
    server = http_server(upstream)
    start_worker()
    start_worker()
    ids = [_submit(api, server.url).json()["id"] for _ in range(3)]
    jobs = [_final(job_id) for job_id in ids]
    assert {job.error_code for job in jobs} == {"upstream_error"}
    rq_jobs = [RQJob.fetch(job_id, connection=queues.get_queue(queues.JOBS_QUEUE).connection) for job_id in ids]
    assert len({rq_job.worker_name for rq_job in rq_jobs}) == 2  # the failures were counted across both workers

    response = _submit(api, server.url)
    assert response.status_code == 503 and response.json()["code"] == "circuit_open"
    assert response.json()["limit"]["circuit"] == "fetch" and response.json()["limit"]["target"] == "127.0.0.1"
    assert int(response["Retry-After"]) == response.json()["retry_after"] >= 1
    requests_so_far = len(server.requests)

    upstream.failing = False
    wait_until(
        lambda: circuit_acquire(get_kind_settings("fetch"), "127.0.0.1", take_trial=False) == CircuitState.HALF_OPEN,
        timeout=5,
    )
    trial = _submit(api, server.url)
    assert trial.status_code == 202
    assert _final(trial.json()["id"]).status == JobStatus.SUCCEEDED
    assert len(server.requests) == requests_so_far + 1
    assert circuit_acquire(get_kind_settings("fetch"), "127.0.0.1", take_trial=False) == CircuitState.CLOSED
    assert _final(_submit(api, server.url).json()["id"]).status == JobStatus.SUCCEEDED


@pytest.mark.django_db(transaction=True)
@pytest.mark.slow
def test_transient_failures_retry_with_backoff_then_succeed_or_refund(
    api: APIClient, user, start_worker, http_server: Callable[..., LocalHTTPServer]
) -> None:
    kind_settings("fetch", circuit_threshold=0, retries=2, retry_backoff=0.2)
    seen: dict[str, int] = {}

    def handler(request: BaseHTTPRequestHandler) -> None:
        seen[request.path] = seen.get(request.path, 0) + 1
        flaky_recovered = request.path == "/flaky" and seen[request.path] > 2
        respond(request, 200 if flaky_recovered else 503, b"ok")

    server = http_server(handler)
    before = credit_balance(user=user)
    flaky = _submit(api, f"{server.url}/flaky").json()["id"]
    down = _submit(api, f"{server.url}/down").json()["id"]
    start_worker()
    flaky_job, down_job = _final(flaky), _final(down)

    assert flaky_job.status == JobStatus.SUCCEEDED and flaky_job.attempts == 3
    assert [entry["code"] for entry in flaky_job.attempt_log] == ["upstream_error", "upstream_error"]
    assert down_job.status == JobStatus.FAILED and down_job.attempts == 3 and len(down_job.attempt_log) == 3
    assert seen["/down"] == 3  # the first attempt and two retries, no more
    assert api.get(f"/api/v1/jobs/{flaky}/").json()["attempt_log"][0]["n"] == 1
    # The failed job was refunded, the succeeded one charged.
    assert credit_balance(user=user) == before - flaky_job.cost == ledger_sum(user=user)


def _sync_fetch(api: APIClient, url: str):
    return api.post("/api/v1/jobs/sync/", {"kind": "fetch", "input": {"url": url}}, format="json")


@pytest.fixture
def hosts(monkeypatch, http_server: Callable[..., LocalHTTPServer]) -> tuple[FakeDNS, LocalHTTPServer]:
    """failing.test and healthy.test both resolve to one local server, which fails only for failing.test."""
    server = http_server(
        lambda request: respond(request, 500 if request.headers["Host"].startswith("failing.") else 200)
    )
    dns = FakeDNS({"failing.test": ["127.0.0.1"], "healthy.test": ["127.0.0.1"]})
    monkeypatch.setattr(ssrf, "resolver", dns)
    return dns, server


def test_a_failing_host_opens_only_its_own_circuit(api: APIClient, hosts) -> None:
    kind_settings("fetch", circuit_threshold=2, circuit_recovery=60, retries=0)
    port = hosts[1].server.server_address[1]
    for _ in range(2):
        assert _sync_fetch(api, f"http://failing.test:{port}/").json()["error"]["code"] == "upstream_error"
    refused = _sync_fetch(api, f"http://failing.test:{port}/")
    assert refused.status_code == 503 and refused.json()["limit"]["target"] == "failing.test"
    assert _sync_fetch(api, f"http://healthy.test:{port}/").status_code == 200


def test_callers_errors_and_our_refusals_never_open_a_circuit(api: APIClient, user, hosts) -> None:
    """Unresolvable names, and names that resolve to a forbidden address only when the job runs."""
    kind_settings("fetch", circuit_threshold=2, circuit_recovery=60, retries=0)
    dns, server = hosts
    answers = iter([[], ["169.254.169.254"]] * 5)  # unresolved at submission, link-local when run
    dns.records["rebinding.test"] = lambda: next(answers)
    port = server.server.server_address[1]
    before = credit_balance(user=user)
    codes = [_sync_fetch(api, f"http://nowhere.test:{port}/").json()["error"]["code"] for _ in range(5)]
    codes += [_sync_fetch(api, f"http://rebinding.test:{port}/").json()["error"]["code"] for _ in range(5)]
    assert codes == ["url_unresolvable"] * 5 + ["url_forbidden"] * 5
    assert credit_balance(user=user) == before - 10 * get_kind_settings("fetch").cost  # the caller's input
    for host in ("nowhere.test", "rebinding.test", "healthy.test"):
        assert circuit_acquire(get_kind_settings("fetch"), host, take_trial=False) == CircuitState.CLOSED
    assert _sync_fetch(api, f"http://healthy.test:{port}/").status_code == 200


def test_metrics_count_circuits_per_state(api: APIClient, hosts) -> None:
    kind_settings("fetch", circuit_threshold=2, circuit_recovery=60, retries=0)
    port = hosts[1].server.server_address[1]
    _sync_fetch(api, f"http://healthy.test:{port}/")
    for host in ("failing.test", "failing.test"):
        _sync_fetch(api, f"http://{host}:{port}/")
    states = circuit_states(get_kind_settings("fetch"))
    assert (states[CircuitState.OPEN], states[CircuitState.CLOSED]) == (1, 0)
