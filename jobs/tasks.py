"""RQ entry points: thin wrappers that take ids and call services (RQ pickles only the ids)."""

from rq import Retry

from jobs.services import job_execute, jobs_reconcile


def execute_job(job_id: str) -> Retry | None:
    return job_execute(job_id=job_id)


def reconcile() -> dict[str, int]:
    return jobs_reconcile()
