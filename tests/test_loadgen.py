"""loadgen: its statistics, its webhook receiver, and whole runs against the real service (gunicorn + RQ)."""

import base64
import io
import json
import os
import secrets
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from standardwebhooks import Webhook

from accounts.models import User
from loadgen.auth import auth_headers
from loadgen.progress import Progress
from loadgen.receiver import WebhookReceiver
from loadgen.stats import CallbackCounts, Distribution, PhaseResult, Sample, percentile
from tests import conftest
from tests.access_helpers import open_compat_to_anonymous
from tests.conftest import ROOT, run_worker_burst, subprocess_env
from tests.processes import free_port
from tests.waiting import wait_until

# --- statistics -----------------------------------------------------------------------------------


def test_nearest_rank_percentile_matches_the_textbook_example() -> None:
    values = [15, 20, 35, 40, 50]  # the classic nearest-rank example: ranks ceil(p/100 * 5)
    assert [percentile(values, p) for p in (0, 5, 30, 40, 50, 100)] == [15, 15, 20, 20, 35, 50]


def test_percentile_of_one_to_hundred_is_the_rank_itself() -> None:
    values = list(range(1, 101))
    assert (percentile(values, 50), percentile(values, 95), percentile(values, 99)) == (50, 95, 99)
    assert percentile(values, 99.5) == 100  # ceil(99.5) = 100: never interpolated, always an observed value


def test_percentile_rejects_empty_input_and_out_of_range_p() -> None:
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_distribution_sorts_and_summarises() -> None:
    figures = Distribution.of([9.0, 1.0, 5.0, 3.0, 7.0, 2.0, 4.0, 8.0, 6.0, 10.0])
    assert (figures.count, figures.min, figures.avg, figures.max) == (10, 1.0, 5.5, 10.0)
    assert (figures.p50, figures.p95, figures.p99) == (5.0, 10.0, 10.0)
    assert Distribution.of([]) == Distribution(0, None, None, None, None, None, None)


def test_phase_summary_counts_status_codes_errors_and_callbacks() -> None:
    samples = [
        Sample(0, 0.0, 10.0, 202, None, True, "a", callback_ms=100.0),
        Sample(1, 0.1, 20.0, 202, None, True, "b"),
        Sample(2, 0.2, 30.0, 429, None, False, None),
        Sample(3, 0.3, 5000.0, None, "ReadTimeout", False, None),
    ]
    summary = PhaseResult("async", False, 2, 2.0, samples, 2, 5.0, CallbackCounts(verified=1), []).summary()
    assert (summary["ok"], summary["failed"], summary["throughput_rps"]) == (2, 2, 2.0)
    assert summary["status_codes"] == {"202": 2, "429": 1}
    assert summary["transport_errors"] == {"ReadTimeout": 1}
    assert summary["latency_ms"]["max"] == 30.0  # a transport error has no latency to report
    assert summary["callbacks"]["received"] == 1 and summary["callbacks"]["completion_rate"] == 0.5
    assert summary["callbacks"]["time_to_callback_ms"]["p99"] == 100.0


def test_auth_headers_bearer_basic_or_none() -> None:
    assert auth_headers(api_key="abc.def") == {"Authorization": "Bearer abc.def"}
    assert auth_headers(basic="alice:pw") == {"Authorization": "Basic " + base64.b64encode(b"alice:pw").decode()}
    assert auth_headers() == {}
    with pytest.raises(ValueError):
        auth_headers(api_key="k", basic="a:b")


def test_loadgen_imports_no_django_and_no_project_module() -> None:
    code = (
        "import sys, loadgen.__main__, loadgen.plot\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'django', 'rest_framework', 'jobs', 'jobsite', 'accounts', 'credits'})\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})


# --- the webhook receiver -------------------------------------------------------------------------


def _secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


def _signed(secret: str, body: str, msg_id: str = "msg_1") -> dict[str, str]:
    now = datetime.now(tz=UTC)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": Webhook(secret).sign(msg_id, now, body),
        "content-type": "application/json",
    }


def test_receiver_accepts_a_correct_signature_and_rejects_a_bad_one() -> None:
    secret = _secret()
    body = json.dumps({"id": "job-1", "status": "succeeded"})
    with WebhookReceiver(secret=secret) as receiver:
        good = httpx.post(receiver.url, content=body, headers=_signed(secret, body), timeout=5)
        forged = httpx.post(receiver.url, content=body, headers=_signed(_secret(), body, "msg_2"), timeout=5)
        tampered = httpx.post(
            receiver.url, content=body.replace("job-1", "job-2"), headers=_signed(secret, body, "msg_3"), timeout=5
        )
        unsigned = httpx.post(receiver.url, content=body, timeout=5)
        again = httpx.post(receiver.url, content=body, headers=_signed(secret, body), timeout=5)
        arrivals, counts = receiver.snapshot({"job-1"})
    assert (good.status_code, forged.status_code, tampered.status_code, unsigned.status_code) == (204, 400, 400, 400)
    assert again.status_code == 204
    assert set(arrivals) == {"job-1"}  # the tampered body named job-2: it must not be recorded
    assert (counts.verified, counts.invalid, counts.duplicates, counts.unmatched) == (2, 3, 1, 0)
    assert counts.statuses == {"succeeded": 1}


def test_receiver_without_secret_matches_compat_request_ids() -> None:
    with WebhookReceiver(id_field="request_id") as receiver:
        ok = httpx.post(receiver.url, json={"request_id": "r1", "status": "success"}, timeout=5)
        wrong_shape = httpx.post(receiver.url, json={"id": "r2"}, timeout=5)
        arrivals, counts = receiver.snapshot({"r1", "r3"})
    assert (ok.status_code, wrong_shape.status_code) == (204, 400)
    assert set(arrivals) == {"r1"} and receiver.received({"r1", "r3"}) == 1
    assert (counts.unverified, counts.malformed, counts.statuses) == (1, 1, {"success": 1})


# --- whole runs against the service ---------------------------------------------------------------


def _loadgen(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "loadgen", "--no-progress", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def _phases(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, list[dict[str, Any]]]:
    """Run loadgen with --json; its exit, output and the phases it wrote."""
    out = tmp_path / "run.json"
    run = _loadgen(*args, "--json", str(out))
    return run, json.loads(out.read_text())["phases"] if out.exists() else []


def _credentials(user: User) -> list[str]:
    return ["--api-key", conftest.auth_headers(user)["Authorization"].removeprefix("Bearer ")]


def _jobs(server_url: str, user: User, **filters: str) -> dict[str, dict[str, Any]]:
    response = httpx.get(
        f"{server_url}/api/v1/jobs/",
        params={"page_size": "500", **filters},
        headers=conftest.auth_headers(user),
        timeout=10,
    )
    assert response.status_code == 200, response.text
    return {job["id"]: job for job in response.json()["results"]}


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_both_modes_against_the_service(server_url: str, make_user: Callable[..., User], tmp_path: Path) -> None:
    user = make_user()
    out, png = tmp_path / "run.json", tmp_path / "run.png"
    run = _loadgen(
        "-n",
        "12",
        "-c",
        "4",
        "--mode",
        "both",
        "--url",
        server_url,
        *_credentials(user),
        "--unique",
        "--callback-wait",
        "0",
        "--json",
        str(out),
        "--plot",
        str(png),
    )
    assert run.returncode == 0, run.stderr
    for row in ("throughput (req/s)", "latency p99 (ms)", "status 200", "status 202", "callbacks expected"):
        assert row in run.stdout
    document = json.loads(out.read_text())
    assert document["percentile_definition"] == "nearest-rank"
    assert "basic" not in document["config"]  # credentials never land in the file
    sync, queued = document["phases"]
    assert (sync["mode"], sync["ok"], sync["status_codes"]) == ("sync", 12, {"200": 12})
    assert (queued["mode"], queued["ok"], queued["status_codes"]) == ("async", 12, {"202": 12})
    for phase in (sync, queued):
        latency = phase["latency_ms"]
        assert 0 < latency["min"] <= latency["p50"] <= latency["p95"] <= latency["p99"] <= latency["max"]
        assert phase["throughput_rps"] > 0 and phase["transport_errors"] == {}
    assert queued["callbacks"]["expected"] == 12  # receipt is asserted in test_async_callbacks_... below
    assert png.read_bytes().startswith(b"\x89PNG") and png.stat().st_size > 10_000

    # No polling by loadgen: the worker drains the queue after the run, then the API shows every job done.
    run_worker_burst()
    sync_ids = {s["job_id"] for s in sync["samples"]}
    async_ids = {s["job_id"] for s in queued["samples"]}
    assert set(_jobs(server_url, user, mode="sync", status="succeeded")) == sync_ids
    assert set(_jobs(server_url, user, mode="async", status="succeeded")) == async_ids
    assert len(sync_ids) == len(async_ids) == 12
    # --unique: no request was answered from the result cache, across both modes
    assert not any(job["cached"] for job in _jobs(server_url, user).values())


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_failures_are_counted_by_status_code(server_url: str, tmp_path: Path) -> None:
    run, (phase,) = _phases(tmp_path, "-n", "6", "-c", "3", "--url", server_url, "--api-key", "jsk_0.wrong")
    assert run.returncode == 1  # not one request succeeded
    assert (phase["ok"], phase["failed"], phase["status_codes"]) == (0, 6, {"401": 6})
    assert "status 401" in run.stdout


def test_transport_errors_are_counted_by_type(tmp_path: Path) -> None:
    run, (phase,) = _phases(tmp_path, "-n", "4", "-c", "2", "--url", f"http://127.0.0.1:{free_port()}")
    assert run.returncode == 1
    assert (phase["failed"], phase["transport_errors"], phase["status_codes"]) == (4, {"ConnectError": 4}, {})
    assert phase["latency_ms"]["count"] == 0
    assert "error ConnectError" in run.stdout


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_async_callbacks_are_received_and_verified(
    server_url: str, make_user: Callable[..., User], start_worker: Callable[..., Any], tmp_path: Path
) -> None:
    user = make_user()
    created = httpx.post(f"{server_url}/api/v1/me/webhook-secret/", headers=conftest.auth_headers(user), timeout=10)
    assert created.status_code == 201, created.text  # depends on webhooks: signing secrets
    start_worker("jobs", "callbacks")
    run, (phase,) = _phases(
        tmp_path,
        "-n",
        "10",
        "-c",
        "5",
        "--mode",
        "async",
        "--url",
        server_url,
        *_credentials(user),
        "--webhook-secret",
        created.json()["secret"],
        "--callback-wait",
        "20",
    )
    assert run.returncode == 0, run.stderr
    callbacks = phase["callbacks"]
    # All of these depend on webhooks: delivery, Standard Webhooks signatures, the final job JSON as body.
    assert (callbacks["expected"], callbacks["received"], callbacks["completion_rate"]) == (10, 10, 1.0)
    assert (callbacks["verified"], callbacks["invalid"], callbacks["unmatched"]) == (10, 0, 0)
    assert callbacks["statuses"] == {"succeeded": 10}
    assert 0 < callbacks["time_to_callback_ms"]["p50"] <= callbacks["time_to_callback_ms"]["max"]


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_compat_routes_both_modes_with_callbacks(
    server_url: str, start_worker: Callable[..., Any], tmp_path: Path
) -> None:
    start_worker("jobs", "callbacks")
    open_compat_to_anonymous()  # as the run command's demo does: the original load generator is anonymous
    wait_until(lambda: httpx.get(f"{server_url}/requests", timeout=5).status_code == 200)
    run, phases = _phases(
        tmp_path, "-n", "6", "-c", "3", "--mode", "both", "--compat", "--url", server_url, "--callback-wait", "20"
    )
    # Everything below depends on webhooks: the /sync and /async routes (anonymous in the demo) and callbacks.
    assert run.returncode == 0, run.stderr
    sync, queued = phases
    assert (sync["ok"], sync["status_codes"]) == (6, {"200": 6})
    assert (queued["ok"], queued["status_codes"]) == (6, {"200": 6})
    assert (queued["callbacks"]["received"], queued["callbacks"]["statuses"]) == (6, {"success": 6})


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_sync_run_with_an_api_key(server_url: str, make_user: Callable[..., User], tmp_path: Path) -> None:
    user = make_user()
    output = subprocess.run(
        [sys.executable, "manage.py", "create_api_key", user.username],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=subprocess_env(),
    )
    assert output.returncode == 0, output.stderr  # depends on API keys: the command
    key = output.stdout.strip().splitlines()[-1]
    run, (phase,) = _phases(tmp_path, "-n", "4", "-c", "2", "--url", server_url, "--api-key", key)
    assert run.returncode == 0, run.stderr
    assert (phase["ok"], phase["status_codes"]) == (4, {"200": 4})  # depends on API keys: Bearer auth


def test_progress_off_a_terminal_prints_a_line_per_quarter_and_the_final_state() -> None:
    stream = io.StringIO()
    progress = Progress(stream=stream)
    for done in range(1, 9):
        progress.update("sync", done, 8)
    progress.finish("sync", 8, 8)
    progress.finish("callbacks", 3, 8)
    lines = stream.getvalue().splitlines()
    assert [line.split("] ")[1].split()[0] for line in lines] == ["1/8", "2/8", "4/8", "6/8", "8/8", "3/8"]
