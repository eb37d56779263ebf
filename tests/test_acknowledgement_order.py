"""An async acknowledgement is sent before its job is queued (jobsite.after_response): the job's webhook can never
reach a caller before the answer that names the job, as with the original backend, whose clients (its own load
generator among them) note a request's id only once they have read its acknowledgement. A sync job's result is
copied to the result cache once it is sent: its caller does not wait on that copy.

The application is called as gunicorn calls it: the response is complete when the application returns, and sent
when the server calls its close(); nothing here closes it before looking at the queue.
"""

import json
from collections.abc import Iterator
from typing import Any

import pytest

from accounts.models import User
from bench.request_cpu import post_environ
from jobs import queues
from jobs.cache import cache_size
from jobs.kind_settings import get_kind_settings
from jobsite.wsgi import application
from tests.access_helpers import open_compat_to_anonymous, set_policy
from tests.conftest import auth_headers
from tests.job_helpers import kind_settings

pytestmark = pytest.mark.django_db(transaction=True)  # the enqueue follows a commit

HASH = {"kind": "hash", "input": {"data": "ordered", "iterations": 1}}


def queued() -> int:
    return queues.get_queue(queues.JOBS_QUEUE).count


def wsgi_post(path: str, body: dict[str, Any], headers: dict[str, str]) -> tuple[str, dict[str, Any], Iterator[bytes]]:
    """POST through the WSGI application: its status, its JSON body and the response, not closed yet."""
    statuses: list[str] = []
    response = application(
        post_environ(path, body, headers), lambda status, headers, exc_info=None: statuses.append(status)
    )
    return statuses[0], json.loads(b"".join(response)), response


@pytest.mark.parametrize("path", ["/api/v1/jobs/async/", "/async"])
def test_the_job_is_queued_once_its_acknowledgement_is_sent(user: User, path: str) -> None:
    open_compat_to_anonymous()
    api = path.startswith("/api")
    status, answer, response = wsgi_post(path, HASH if api else {"data": "ordered"}, auth_headers(user) if api else {})
    assert status.startswith(("202", "200")), answer
    assert queued() == 0  # accepted and committed, not queued while the answer is on its way
    response.close()  # the server has written it
    assert queued() == 1


def test_an_acknowledgement_that_waits_for_its_job_queues_it_first(user: User) -> None:
    set_policy("jobs.async", max_wait_seconds=1)
    headers = {**auth_headers(user), "Prefer": "wait=1"}
    status, answer, response = wsgi_post("/api/v1/jobs/async/", HASH, headers)  # no worker: the wait runs out
    assert (status[:3], answer["status"]) == ("202", "queued")
    assert queued() == 1
    response.close()
    assert queued() == 1


@pytest.mark.parametrize("path", ["/api/v1/jobs/sync/", "/sync"])
def test_a_sync_result_is_cached_once_it_is_sent(user: User, path: str) -> None:
    open_compat_to_anonymous()
    kind_settings("hash", cache_algorithm="lru")
    api = path.startswith("/api")
    status, answer, response = wsgi_post(path, HASH if api else {"data": "ordered"}, auth_headers(user) if api else {})
    assert status.startswith("200"), answer
    assert cache_size(get_kind_settings("hash")) == 0  # the result is on its way; its cache copy waits for that
    response.close()
    assert cache_size(get_kind_settings("hash")) == 1
