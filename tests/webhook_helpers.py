"""Helpers for webhook tests: a fake DNS at the edge of the world, and draining the callbacks queue."""

import socket
import time
from collections.abc import Callable, Iterable

from django.conf import settings
from rq.scheduler import RQScheduler

from jobs import queues
from jobs.webhooks import _host_key
from jobsite.redis import get_redis
from tests.conftest import run_worker_burst
from tests.waiting import wait_until


class FakeDNS:
    """Stands in for the system resolver (jobs.ssrf.resolver): answers what the test says, counts questions.

    An answer is a list of addresses, or a callable returning one per question (to re-resolve differently).
    Unknown names do not resolve, so no test ever asks the real DNS.
    """

    def __init__(self, records: dict[str, Iterable[str] | Callable[[], list[str]]] | None = None):
        self.records = dict(records or {})
        self.questions: list[str] = []

    def __call__(self, host: str, port: int) -> list[str]:
        self.questions.append(host)
        answer = self.records.get(host)
        if answer is None:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return answer() if callable(answer) else list(answer)


def drain_callbacks(*, timeout: float = 20.0) -> None:
    """Run deliveries in-process until none is queued or scheduled; RQ's own scheduler releases retries."""
    queue = queues.get_queue(queues.CALLBACKS_QUEUE)

    def drained() -> bool:
        run_worker_burst(queues.CALLBACKS_QUEUE)
        if queue.scheduled_job_registry.count == 0 and queue.count == 0:
            return True
        scheduler = RQScheduler([queue], connection=queue.connection)
        scheduler.acquire_locks()
        scheduler.enqueue_scheduled_jobs()  # retries whose time has come
        scheduler.release_locks()
        return False

    wait_until(drained, timeout=timeout)


def hold_host_leases(url: str) -> None:
    """Every per-host slot of the URL's host taken for a minute, as by deliveries in flight elsewhere."""
    lease_end_ms = (time.time() + 60) * 1000
    get_redis().zadd(_host_key(url), {f"held-{n}": lease_end_ms for n in range(settings.CALLBACK_MAX_PER_HOST)})
