"""What a job costs: charged on acceptance, refunded in full when it ends for a reason not the caller's, or
canceled before it started (once it ran, the work was done: a cancel then refunds nothing)."""

from credits.models import LedgerEntry
from credits.services import charge_entry, credit_charge, credit_refund
from jobs import metrics
from jobs.models import Job, JobStatus


def job_charge(job: Job) -> None:
    """Charge the job's cost once (posting key per job); InsufficientCredits rolls back the acceptance."""
    if credit_charge(user_id=job.owner_id, amount=job.cost, job_id=job.id, reason=_charge_reason(job)):
        job_charge_counted(job)


def job_charge_entry(job: Job) -> LedgerEntry:
    """The ledger entry of job_charge, for a statement that writes it with the job (jobs.acceptance)."""
    return charge_entry(user_id=job.owner_id, amount=job.cost, job_id=job.id, reason=_charge_reason(job))


def job_charge_counted(job: Job) -> None:
    """The job's charge is written: count it."""
    metrics.CREDITS.labels(type="charged").inc(job.cost)


def _charge_reason(job: Job) -> str:
    return f"{job.kind} job"


def refund_due(job: Job) -> bool:
    """Canceled before it started, or failed for any reason but the caller's own bad input to a kind that ran; never
    for a free job (nothing was charged)."""
    if job.cost == 0:
        return False
    if job.status == JobStatus.CANCELED:
        return job.started_at is None
    if job.status != JobStatus.FAILED:
        return False
    last = job.attempt_log[-1] if job.attempt_log else {}
    return not last.get("callers_fault", False)


def job_refund_if_due(job: Job) -> None:
    if not refund_due(job):
        return
    reason = f"job {job.status}" + (f": {job.error_code}" if job.error_code else "")
    refund = credit_refund(job_id=job.id, reason=reason)
    if refund is not None:
        metrics.CREDITS.labels(type="refunded").inc(refund.amount)
