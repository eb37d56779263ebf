"""Concurrency caps: at most N queued-or-running jobs per user and per endpoint, counted in the database.

Every (endpoint, owner) under a cap has a hot counter (ConcurrencySlot.in_use). A job admitted under a cap
takes a slot with one conditional upsert in the transaction that creates it, or in the one statement that
does (jobs.acceptance; no row back = the per-user cap is reached) and gives it back in the transaction, or the statement, that makes it final (job_finish, job_cancel; a lost worker's
job is failed through job_finish); a requeued final job takes it again. The database stays the source of
truth: a Redis flush cannot lose a slot, and `in_use == COUNT(queued or running jobs)` holds at every commit
for jobs admitted while the policy had a cap. Endpoints without caps (the compatible routes, whose anonymous
callers share one owner) take no slot: one counter row for everyone would serialise their submissions. A job
remembers whether it took one (`Job.holds_slot`) and only such a job gives one back, so a cap set or lifted
while jobs run leaves every counter exact; a release never takes a counter below zero. The rare global
cap sums an endpoint's counters under a lock that serialises competing submissions to it.
"""

import hashlib
from typing import Any

from django.conf import settings
from django.db import connection
from django.db.models import Sum

from accounts import metrics
from accounts.models import EndpointPolicy, User
from jobs.models import ConcurrencySlot, Job
from jobsite.errors import RateLimited

_SLOTS = ConcurrencySlot._meta.db_table

_TAKE = (
    f"INSERT INTO {_SLOTS} (endpoint, owner_id, in_use) {{rows}}"
    f" ON CONFLICT (endpoint, owner_id) DO UPDATE SET in_use = {_SLOTS}.in_use + excluded.in_use"
)
"""More jobs (excluded.in_use: how many) hold slots (PostgreSQL, SQLite >= 3.35), `rows` being one of:"""
_ROW = "VALUES (%s, %s, %s)"
"""endpoint, owner id, jobs."""
_ROW_WHERE = "SELECT %s, %s, %s WHERE {conditions}"
"""endpoint, owner id, jobs, then the conditions' parameters: no row to take unless they hold."""
ENDPOINT_IN_USE = f"(SELECT COALESCE(SUM(in_use), 0) FROM {_SLOTS} WHERE endpoint = %s)"
"""endpoint: the slots its jobs hold, what a global cap counts."""
ENDPOINT_IN_USE_LOCKED = "jobs_endpoint_in_use_locked(%s, %s)"
"""endpoint, lock key (PostgreSQL, migration jobs 0024): a transaction-scoped advisory lock that serialises submissions to
the endpoint, then ENDPOINT_IN_USE in a snapshot taken after it (a VOLATILE function's query takes its own), so one
statement can lock, count and take a slot."""
_BELOW_CAP = f" WHERE {_SLOTS}.in_use + excluded.in_use <= %s"
"""The per-user cap on an existing counter (a first row is inserted without it)."""

_RELEASE = f"UPDATE {_SLOTS} SET in_use = in_use - 1 WHERE endpoint = %s AND owner_id = %s AND in_use > 0"
"""One job fewer holds a slot; never below zero."""


def endpoint_in_use_locked(name: str) -> tuple[str, list[Any]]:
    """PostgreSQL: ENDPOINT_IN_USE_LOCKED and its parameters, for a statement that takes a slot under a global cap."""
    return ENDPOINT_IN_USE_LOCKED, [name, _lock_key(name)]


def _endpoint_in_use(name: str) -> tuple[str, list[Any]]:
    """The endpoint's slots in use, counted after its lock (SQLite's write transaction holds one from BEGIN)."""
    if connection.vendor == "postgresql":
        return endpoint_in_use_locked(name)
    return ENDPOINT_IN_USE, [name]


def _lock_key(name: str) -> int:
    digest = hashlib.sha256(f"jobsite:concurrency:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _refuse(cap: str, limit: int, active: int, policy: EndpointPolicy) -> RateLimited:
    metrics.RATE_LIMIT_REJECTIONS.labels(endpoint=policy.name, algorithm=cap).inc()
    return RateLimited(
        f"Concurrency cap reached: {active} of {limit} jobs queued or running ({cap} of {policy.name}).",
        headers={"Retry-After": str(settings.CONCURRENCY_CAP_RETRY_AFTER)},
        limit={"policy": policy.name, "cap": cap, "max": limit},
        retry_after=settings.CONCURRENCY_CAP_RETRY_AFTER,
    )


def concurrency_capped(policy: EndpointPolicy) -> bool:
    """Whether jobs of the policy's endpoint take slots (it has a per-user or a global cap)."""
    return bool(policy.max_concurrent_per_user or policy.max_concurrent_global)


def concurrency_admit(*, user: User, policy: EndpointPolicy, jobs: int = 1) -> bool:
    """Take slots for `jobs` more jobs of the user's (a batch takes all of its jobs' at once), or raise RateLimited
    if they would go over a cap of the policy (0 = no cap).

    Returns whether slots were taken (the jobs' `holds_slot`). Must run inside the job-creating transaction:
    the slot and the job commit (or roll back) together.
    """
    if not concurrency_capped(policy):
        return False
    if not connection.in_atomic_block:
        raise RuntimeError("concurrency_admit must run inside the job-creating transaction")
    sql, params = slot_take_statement(policy, owner_id=user.pk, jobs=jobs)
    with connection.cursor() as cursor:
        cursor.execute(f"{sql} RETURNING in_use", params)
        if cursor.fetchone() is not None:
            return True
    raise concurrency_refusal(policy, jobs=jobs)


def slot_take_statement(
    policy: EndpointPolicy, *, owner_id: int, jobs: int = 1, condition: str = "", endpoint_total: str = ""
) -> tuple[str, list[Any]]:
    """The conditional upsert that takes `jobs` slots of the owner's under the policy's caps, and its parameters; it
    writes no row if a cap (or `condition`, SQL without parameters) says no: concurrency_refusal says which cap.

    A global cap's sum counts every earlier admission only in a snapshot taken after the endpoint's lock:
    ENDPOINT_IN_USE_LOCKED on PostgreSQL (or `endpoint_total`, SQL without parameters that reads its result, where the
    statement reports the count too: jobs.acceptance); on SQLite every write transaction holds the database lock
    from BEGIN (settings: transaction_mode IMMEDIATE). Lock order is always endpoint, then the user's row: the caps
    cannot deadlock.
    """
    cap, global_cap = policy.max_concurrent_per_user, policy.max_concurrent_global
    if cap and jobs > cap:  # a first row is inserted without the cap's condition
        raise _refuse("max_concurrent_per_user", cap, 0, policy)
    conditions, params = [], [policy.name, owner_id, jobs]
    if global_cap:
        in_use, in_use_params = (endpoint_total, []) if endpoint_total else _endpoint_in_use(policy.name)
        conditions.append(f"{in_use} + %s <= %s")  # the endpoint's total would not go over the global cap
        params += [*in_use_params, jobs, global_cap]
    if condition:
        conditions.append(condition)
    rows = _ROW_WHERE.format(conditions=" AND ".join(conditions)) if conditions else _ROW
    sql = _TAKE.format(rows=rows)
    if cap:
        sql, params = f"{sql}{_BELOW_CAP}", [*params, cap]
    return sql, params


def concurrency_refusal(policy: EndpointPolicy, *, jobs: int = 1, in_use: int | None = None) -> RateLimited:
    """Which cap refused slot_take_statement's slots. A global cap's count is `in_use` (ENDPOINT_IN_USE as the
    refusing statement saw it), else read again in its transaction, the lock still held: the total that refused."""
    cap, global_cap = policy.max_concurrent_per_user, policy.max_concurrent_global
    if global_cap:
        count = in_use
        if count is None:
            count = ConcurrencySlot.objects.filter(endpoint=policy.name).aggregate(n=Sum("in_use"))["n"] or 0
        if count + jobs > global_cap or not cap:
            return _refuse("max_concurrent_global", global_cap, count, policy)
    return _refuse("max_concurrent_per_user", cap, cap, policy)


def concurrency_release(job: Job) -> None:
    """The job reached a final state: its slot, if it took one, is free. Call in the transaction that made it final."""
    if not job.holds_slot:
        return  # admitted without a cap: no counter to write (the compatible routes' finish stays one UPDATE)
    with connection.cursor() as cursor:  # by hand, like _TAKE: the ORM's UPDATE costs more CPU to build than to run
        cursor.execute(*concurrency_release_statement(job))


def concurrency_release_statement(job: Job) -> tuple[str, list[Any]]:
    """concurrency_release's UPDATE and its parameters, for a statement that makes the job final too (a CTE)."""
    # in_use > 0: rows from before `holds_slot` existed may count a job admitted before its policy had a cap.
    return _RELEASE, [job.endpoint, job.owner_id]


def concurrency_retake(job: Job) -> None:
    """A final job is active again (requeued by staff): it holds a slot again, whatever the caps say now.

    The caller sets the job's `holds_slot` in the same transaction."""
    with connection.cursor() as cursor:
        cursor.execute(_TAKE.format(rows=_ROW), [job.endpoint, job.owner_id, 1])
