"""The result cache as jobs use it: written only after the outcome is committed, and scoped per owner."""

from collections.abc import Callable, Iterator

import pytest
from django.test import override_settings
from rest_framework.test import APIClient

from accounts.models import User
from jobs.execution import job_execute
from jobs.kind_settings import kind_defaults
from jobs.kinds import KINDS
from jobs.models import Job, JobStatus
from jobsite import redis as jobsite_redis
from tests.conftest import LocalHTTPServer, respond
from tests.job_helpers import kind_settings
from tests.processes import free_port

pytestmark = pytest.mark.django_db

HASH = {"kind": "hash", "input": {"data": "db first", "iterations": 5}}


@pytest.fixture
def redis_gone() -> Iterator[None]:
    """Within the block every Redis call of this process goes to a closed port: a real connection refused."""

    def reconnect() -> None:
        jobsite_redis.get_redis.cache_clear()
        jobsite_redis._script.cache_clear()

    with override_settings(REDIS_URL=f"redis://127.0.0.1:{free_port()}/0"):
        reconnect()
        try:
            yield
        finally:
            reconnect()
    reconnect()


def test_redis_failing_at_the_cache_write_keeps_the_committed_result(api: APIClient, request) -> None:
    job_id = api.post("/api/v1/jobs/async/", HASH, format="json").json()["id"]
    request.getfixturevalue("redis_gone")  # Redis dies while the worker runs the job
    assert job_execute(job_id=job_id) is None
    job = Job.objects.get(pk=job_id)
    assert job.status == JobStatus.SUCCEEDED and job.attempts == 1
    assert api.get(f"/api/v1/jobs/{job_id}/").json()["result"]["iterations"] == 5


def test_a_second_user_gets_no_hit_for_another_users_fetch(
    client_for: Callable[[User], APIClient],
    user: User,
    other_user: User,
    settings,
    http_server: Callable[..., LocalHTTPServer],
) -> None:
    settings.CALLBACK_ALLOW_PRIVATE = True
    kind_settings("fetch", cache_algorithm="lru")
    server = http_server(lambda request: respond(request, 200, b"for whoever asked"))
    fetch = {"kind": "fetch", "input": {"url": server.url}}
    alice, bob = client_for(user), client_for(other_user)
    assert alice.post("/api/v1/jobs/sync/", fetch, format="json").json()["cached"] is False
    assert alice.post("/api/v1/jobs/sync/", fetch, format="json").json()["cached"] is True
    assert bob.post("/api/v1/jobs/sync/", fetch, format="json").json()["cached"] is False
    assert len(server.requests) == 2  # fetched again for bob, under his own request


def test_public_results_are_shared(client_for: Callable[[User], APIClient], user: User, other_user: User) -> None:
    assert KINDS["hash"].public_results  # a pure function of its input
    first = client_for(user).post("/api/v1/jobs/sync/", HASH, format="json").json()
    hit = client_for(other_user).post("/api/v1/jobs/sync/", HASH, format="json").json()
    assert (first["cached"], hit["cached"], hit["result"]) == (False, True, first["result"])


def test_fetch_cache_is_off_by_default() -> None:
    assert kind_defaults("fetch")["cache_algorithm"] == "none" and kind_defaults("hash")["cache_algorithm"] == "lru"
