"""Concurrency caps: at most N queued-or-running jobs per user and per endpoint, counted in the database.

The database is the source of truth: a cap is checked by COUNTing active jobs inside the transaction
that creates the job, under a lock that serialises competing submissions, so there is no over-admission
and nothing to release by hand: a job stops counting the moment it reaches a final state (finished,
failed, canceled or reaped), and a Redis flush cannot lose a slot.
"""

import hashlib

from django.conf import settings
from django.db import connection

from accounts import metrics
from accounts.models import EndpointPolicy, User
from jobs.models import Job, JobStatus
from jobsite.errors import RateLimited

ACTIVE_STATUSES = (JobStatus.QUEUED, JobStatus.RUNNING)
"""A job in one of these holds a concurrency slot."""


def _lock_endpoint(name: str) -> None:
    """Serialise submissions to one endpoint until the transaction ends.

    PostgreSQL: a transaction-scoped advisory lock (no row needed). SQLite: every write transaction
    already holds the database lock from BEGIN (settings: transaction_mode IMMEDIATE).
    """
    if connection.vendor != "postgresql":
        return
    digest = hashlib.sha256(f"jobsite:concurrency:{name}".encode()).digest()
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", [int.from_bytes(digest[:8], "big", signed=True)])


def _refuse(cap: str, limit: int, active: int, policy: EndpointPolicy) -> RateLimited:
    metrics.RATE_LIMIT_REJECTIONS.labels(endpoint=policy.name, algorithm=cap).inc()
    return RateLimited(
        f"Concurrency cap reached: {active} of {limit} jobs queued or running ({cap} of {policy.name}).",
        headers={"Retry-After": str(settings.CONCURRENCY_CAP_RETRY_AFTER)},
        limit={"policy": policy.name, "cap": cap, "max": limit},
        retry_after=settings.CONCURRENCY_CAP_RETRY_AFTER,
    )


def concurrency_admit(*, user: User, policy: EndpointPolicy) -> None:
    """Raise RateLimited if one more active job would exceed the policy's caps (0 = no cap).

    Must run inside the transaction that creates the job, so that the lock is held until it commits.
    """
    if not (policy.max_concurrent_global or policy.max_concurrent_per_user):
        return
    if not connection.in_atomic_block:
        raise RuntimeError("concurrency_admit must run inside the job-creating transaction")
    active = Job.objects.filter(endpoint=policy.name, status__in=ACTIVE_STATUSES)
    # Lock order is always endpoint, then user: no deadlock between the two caps.
    if policy.max_concurrent_global:
        _lock_endpoint(policy.name)
        count = active.count()
        if count >= policy.max_concurrent_global:
            raise _refuse("max_concurrent_global", policy.max_concurrent_global, count, policy)
    if policy.max_concurrent_per_user:
        list(User.objects.select_for_update().filter(pk=user.pk).values_list("pk", flat=True))
        count = active.filter(owner=user).count()
        if count >= policy.max_concurrent_per_user:
            raise _refuse("max_concurrent_per_user", policy.max_concurrent_per_user, count, policy)
