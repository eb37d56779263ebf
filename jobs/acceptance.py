"""A job accepted in one statement on PostgreSQL: its concurrency slot, its row, its charge and its Idempotency-Key
(its record, or the binding of a key claimed before) written together by one data-modifying statement, where a
transaction of their own statements takes up to seven round trips (BEGIN, a global cap's lock, slot, job, charge,
key, COMMIT; 0.2-0.3 ms each on this machine).

Each part writes only if the part before it wrote, so a refusal writes nothing: no slot (a cap said no, or the
owner has no credit account yet), then no job, then no charge and no key; a charge beyond the balance fails the
whole statement on the balance's CHECK constraint, and a key recorded already on the key's unique constraint (the
slot's row is taken first, as a sync job's outcome gives it back before it answers the key: jobsite.db.update_then
runs its followers in order, so a duplicate's acceptance and the first request's outcome cannot deadlock). It
runs in autocommit, as one statement the server binds and, once run a few times, has prepared (jobsite.settings).
A sync job's acceptance commits without waiting for the WAL's flush (synchronous_commit off for its own transaction):
the job's outcome commits with the flush before the answer, and the flush covers every earlier record, so nothing
answered can be lost; a crash before it loses the acceptance whole (slot, job, charge and key together) and the
request, which was never answered, with it. An async job's acceptance is answered at once, so it waits for the flush.
A global cap's sum must count every earlier admission, so it is read in a snapshot taken after the endpoint's lock:
a function takes the lock, then sums in a snapshot of its own (jobs.concurrency.ENDPOINT_IN_USE_LOCKED). SQLite (no
data-modifying CTEs) and an owner without a credit account (opened on a first charge) take jobs.pipeline's
transaction of separate statements instead.
"""

import contextlib
from typing import Any

from django.db import IntegrityError, connection, transaction

from accounts.models import EndpointPolicy
from credits.models import BALANCE_NOT_NEGATIVE, CreditAccount
from credits.services import charge_after, credits_short
from jobs.billing import job_charge_counted, job_charge_entry
from jobs.concurrency import concurrency_refusal, endpoint_in_use_locked, slot_take_statement
from jobs.idempotency import KeyClaimNeeded, KeyWrite, idempotency_bind_statement, idempotency_written
from jobs.models import IDEMPOTENCY_KEY_UNIQUE, Job, JobMode
from jobsite.db import insert_row, insert_values

_ACCOUNTS = CreditAccount._meta.db_table


def job_accept(job: Job, *, policy: EndpointPolicy) -> bool:
    """Write a new job with what must commit with it, in one statement: a slot if `job.holds_slot`, the charge of
    `job.cost`, and the request's Idempotency-Key tied to it. False, having written nothing, where this cannot
    (SQLite, or no credit account yet); raises RateLimited (a cap), InsufficientCredits or KeyClaimNeeded (a key
    claimed with the job is recorded already), having written nothing."""
    if connection.vendor != "postgresql":
        return False
    sql, params, key_write = _statement(job, policy)
    try:
        # In a caller's transaction, a savepoint keeps it usable if the statement fails.
        savepoint = transaction.atomic() if connection.in_atomic_block else contextlib.nullcontext()
        with savepoint, connection.cursor() as cursor:
            cursor.execute(sql, params)
            has_account, accepted, in_use = cursor.fetchone()[:3]
    except IntegrityError as error:
        constraint = getattr(getattr(error.__cause__, "diag", None), "constraint_name", None)
        if constraint == IDEMPOTENCY_KEY_UNIQUE:
            raise KeyClaimNeeded from None
        if constraint != BALANCE_NOT_NEGATIVE:
            raise
        raise credits_short(user_id=job.owner_id, cost=job.cost) from None
    if has_account and not accepted:
        raise concurrency_refusal(policy, in_use=in_use)
    if not has_account:
        return False
    job._state.adding, job._state.db = False, connection.alias
    if key_write is not None:
        idempotency_written(key_write)
    if job.cost:
        job_charge_counted(job)
    return True


def _statement(job: Job, policy: EndpointPolicy) -> tuple[str, list[Any], KeyWrite | None]:
    """`WITH [account], [endpoint_total, slot], job, [charge], [bound key] SELECT has_account, accepted, the endpoint's
    slots in use (a global cap's count, else NULL)[, set_config(synchronous_commit off)]`: each CTE conditioned on the
    last; the set_config for a sync job's acceptance (the module's docstring)."""
    parts: list[str] = []
    params: list[Any] = []
    written = "true"
    if job.cost:
        parts.append(f"account AS (SELECT FROM {_ACCOUNTS} WHERE user_id = %s)")
        params.append(job.owner_id)
        written = "EXISTS (SELECT FROM account)"
    endpoint_total = ""
    if job.holds_slot:
        if policy.max_concurrent_global:  # counted once, after the endpoint's lock: the count the cap's condition saw
            total, total_params = endpoint_in_use_locked(policy.name)
            parts.append(f"endpoint_total AS (SELECT {total} AS in_use)")
            params += total_params
            endpoint_total = "(SELECT in_use FROM endpoint_total)"
        take, take_params = slot_take_statement(
            policy, owner_id=job.owner_id, condition=written, endpoint_total=endpoint_total
        )
        parts.append(f"slot AS ({take} RETURNING 1)")
        params += take_params
        written = "EXISTS (SELECT FROM slot)"
    into, row, values = insert_row(job)
    parts.append(f"job AS ({into} SELECT {row} WHERE {written} RETURNING 1)")
    params += values
    if job.cost:
        entry = job_charge_entry(job)
        charge, entry_fields = charge_after("EXISTS (SELECT FROM job)")
        parts.append(charge)
        params += [entry.amount, entry.account_id, *insert_values(entry, entry_fields)]
    if (key_write := idempotency_bind_statement(job)) is not None:
        bind, bind_params = key_write.statement  # a key recorded already fails the statement (unique constraint)
        parts.append(f"bound AS ({bind} AND EXISTS (SELECT FROM job))")
        params += bind_params
    has_account = "EXISTS (SELECT FROM account)" if job.cost else "true"
    answered_later = job.mode == JobMode.SYNC and not connection.in_atomic_block  # see the module's docstring
    no_flush_wait = ", set_config('synchronous_commit', 'off', true)" if answered_later else ""
    return (
        f"WITH {', '.join(parts)} SELECT {has_account}, EXISTS (SELECT FROM job), {endpoint_total or 'NULL'}"
        f"{no_flush_wait}",
        params,
        key_write,
    )
