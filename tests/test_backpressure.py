"""Back-pressure of async acknowledgements over HTTP: a real gunicorn, real workers, a bounded jobs queue."""

import threading

import httpx
import pytest

from accounts.models import User
from jobs import queues
from jobs.models import Job, JobStatus
from jobsite.redis import get_redis
from tests.conftest import auth_headers, gunicorn_server, run_worker_burst
from tests.waiting import wait_until

pytestmark = pytest.mark.django_db(transaction=True)

BOUND = 3
"""QUEUE_ADMISSION_DEPTH of the server under test."""


def submit(client: httpx.Client, n: int) -> httpx.Response:
    body = {"kind": "hash", "input": {"data": f"backpressure-{n}", "iterations": 10}}
    return client.post("/api/v1/jobs/async/", json=body)


def blocked_on_room() -> int:
    """Redis clients of the test's database blocked in BLPOP: acknowledgements waiting on a pool's room list."""
    redis = get_redis()
    database = str(redis.connection_pool.connection_kwargs.get("db", 0))
    return sum(1 for client in redis.client_list() if client["cmd"] == "blpop" and client["db"] == database)


def test_a_full_queue_holds_acknowledgements_then_refuses_them(user: User) -> None:
    env = {"QUEUE_ADMISSION_DEPTH": str(BOUND), "QUEUE_ADMISSION_WAIT": "3"}
    with (
        gunicorn_server("backpressure", **env) as url,
        httpx.Client(base_url=url, headers=auth_headers(user), timeout=30) as client,
    ):
        accepted = [submit(client, n) for n in range(BOUND)]  # no worker yet: the queue fills to its bound
        assert [response.status_code for response in accepted] == [202] * BOUND
        refused = submit(client, BOUND)  # waits up to QUEUE_ADMISSION_WAIT for room, none comes
        assert refused.status_code == 503, refused.text
        assert refused.json()["code"] == "queue_full" and refused.headers["Retry-After"] == "5"
        assert refused.json()["queue_capacity"] == BOUND
        assert Job.objects.count() == BOUND  # nothing recorded, nothing charged for the refused one
        assert queues.queue_depth() == BOUND

        waiting: dict[str, httpx.Response] = {}
        sender = threading.Thread(target=lambda: waiting.update(response=submit(client, BOUND + 1)))
        sender.start()
        wait_until(lambda: blocked_on_room() == 1, timeout=10)  # it waits on the room list: it does not poll
        run_worker_burst()  # a worker takes a queued job and wakes it: the waiting acknowledgement is taken
        sender.join(30)
        assert waiting["response"].status_code == 202, waiting["response"].text
    run_worker_burst()
    assert Job.objects.filter(status=JobStatus.SUCCEEDED).count() == BOUND + 1
