"""RQ entry points: thin wrappers that take ids and call services (RQ pickles only the ids)."""

from jobs.idempotency import idempotency_purge_expired
from jobs.services import job_execute, jobs_reconcile


def execute_job(job_id: str) -> None:
    job_execute(job_id=job_id)


def reconcile() -> dict[str, int]:
    return {**jobs_reconcile(), "idempotency_keys_purged": idempotency_purge_expired()}
