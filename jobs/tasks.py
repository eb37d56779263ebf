"""RQ entry points: thin wrappers that take ids and call services (RQ pickles only the ids)."""

from jobs.services import job_execute, jobs_reconcile
from jobs.webhooks import callback_deliver, callbacks_reconcile


def execute_job(job_id: str) -> None:
    job_execute(job_id=job_id)


def deliver_callback(job_id: str, n: int, retries_left: int) -> str:
    return callback_deliver(job_id=job_id, n=n, retries_left=retries_left)


def reconcile() -> dict[str, int]:
    return {**jobs_reconcile(), **callbacks_reconcile()}
