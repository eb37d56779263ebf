"""RQ entry points: thin wrappers that take ids and call services (RQ pickles only the ids)."""

import time
from typing import Any
from uuid import UUID

from opentelemetry import context
from rq import Retry, get_current_job

from credits.selectors import credit_accounts_out_of_balance
from jobs.batches import batches_reconcile
from jobs.execution import job_execute, job_held_settle
from jobs.metrics import LEDGER_CHECK_KEY, RECONCILER_LAST_RUN_KEY
from jobs.services import held_jobs_reconcile, jobs_purge_expired, jobs_reconcile
from jobs.uploads import uploads_purge_expired
from jobs.webhooks import (
    batch_webhook_deliver,
    webhook_deliver,
    webhook_deliver_first,
    webhook_event_deliver,
    webhook_test_deliver,
    webhooks_reconcile,
)
from jobsite.logs import log_context
from jobsite.redis import get_redis
from jobsite.tracing import TRACE_META_KEY, extract_context


def execute_job(job_id: str) -> Retry | None:
    rq_job = get_current_job()
    token = context.attach(extract_context(rq_job.meta.get(TRACE_META_KEY) if rq_job else None))
    try:
        with log_context(job_id=job_id):
            worker_name = (rq_job.worker_name or "") if rq_job else ""
            return job_execute(job_id=job_id, worker_name=worker_name, deliver_first=webhook_deliver_first)
    finally:
        context.detach(token)


def release_job(job_id: str) -> str:
    """A held job's release (at its run_at, or a retry while its cap is full): queue it if it is due."""
    with log_context(job_id=job_id):
        return job_held_settle(job_id=UUID(job_id))


# Keeps its old name: deliveries already queued in Redis call it by this dotted path.
def deliver_callback(job_id: str, n: int, retries_left: int, give_up_at: float | None = None) -> str:
    with log_context(job_id=job_id, webhook_attempt=n):
        return webhook_deliver(job_id=job_id, n=n, retries_left=retries_left, give_up_at=give_up_at)


def deliver_webhook_event(job_id: str, event: str, data: dict[str, Any], msg_id: str, retries_left: int) -> str:
    with log_context(job_id=job_id, webhook_id=msg_id):
        return webhook_event_deliver(job_id=job_id, event=event, data=data, msg_id=msg_id, retries_left=retries_left)


def deliver_batch_callback(batch_id: str, n: int, retries_left: int) -> str:
    with log_context(batch_id=batch_id, webhook_attempt=n):
        return batch_webhook_deliver(batch_id=batch_id, n=n, retries_left=retries_left)


def send_test_webhook(user_id: int, url: str, msg_id: str) -> dict[str, Any]:
    with log_context(webhook_id=msg_id):
        return webhook_test_deliver(user_id=user_id, url=url, msg_id=msg_id)


def reconcile() -> dict[str, int]:
    report = {
        **jobs_reconcile(),
        **held_jobs_reconcile(),
        **batches_reconcile(),
        **webhooks_reconcile(),
    }
    get_redis().set(RECONCILER_LAST_RUN_KEY, time.time())  # /metrics: alerts fire when the cron stops
    return report


def purge_expired() -> dict[str, int]:
    return {**jobs_purge_expired(), "uploads_purged": uploads_purge_expired()}


def check_ledger() -> int:
    """Count the credit accounts out of balance with their ledger, for /metrics (an alert pages on any)."""
    mismatched = credit_accounts_out_of_balance()
    get_redis().set(LEDGER_CHECK_KEY, mismatched)
    return mismatched
