"""Helpers for webhook tests: a fake DNS at the edge of the world, and draining the callbacks queue."""

import socket
from collections.abc import Callable, Iterable

from rq.scheduler import RQScheduler

from jobs import queues
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
