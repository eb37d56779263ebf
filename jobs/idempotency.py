"""Idempotency keys (Stripe / IETF draft semantics): one execution per user and key, replayed after.

Records live in the database, not Redis: the stored response belongs to an accepted request (a job),
and nothing accepted is kept only in Redis; the unique (owner, key) constraint makes the claim atomic
across processes without a second source of truth that a Redis flush could lose.

A job submission claims its key with its job (`claim_on_acceptance`): the record is INSERTed by the statement
(or transaction) that accepts the job, so a first request pays no statement of its own for its key. Everything
before the acceptance only reads, and a key found recorded there writes nothing (KeyClaimNeeded): the request is
then answered as a claim made first would have answered it (replay, 409 or 422). A request refused before its
acceptance (a full queue, an open circuit) looks the key up before it answers, so a retry of a recorded request
still gets the recorded answer.
"""

import copy
import hashlib
import json
import math
import re
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import Any
from uuid import UUID

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Q
from django.utils import timezone
from rest_framework.response import Response

from accounts.models import EndpointPolicy, User
from accounts.requests import AuthenticatedRequest
from jobs.models import FINAL_STATUSES, IdempotencyRecord, IdempotencyStatus, Job, JobMode, JobStatus
from jobsite.db import insert_row, insert_unless_conflict, update_where, update_where_statement
from jobsite.errors import (
    PROBLEM_CONTENT_TYPE,
    IdempotencyInFlight,
    IdempotencyKeyReused,
    InvalidInput,
    JobFailed,
)

KEY_HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
KEY_MAX_LENGTH = 255
"""Longest Idempotency-Key accepted (the column's size)."""
KEY_PATTERN = r"^[\x21-\x7e]+( +[\x21-\x7e]+)*$"
"""Printable ASCII, no leading or trailing space (HTTP strips those anyway); also the schema's pattern."""

REPLAYED_RESPONSE_HEADERS = ("Location", "Retry-After", "Preference-Applied", "Vary")
"""Response headers stored with the body and replayed."""

EXECUTED_ERRORS = (JobFailed,)
"""Errors raised after the job ran: their responses are stored and replayed; any other error releases the key."""

KEY_FIELDS = ("owner", "key")
"""The record's unique fields: one record per user and key."""

_CLAIM_ATTEMPTS = 3

JOB_IN_FLIGHT_RETRY_AFTER = 1
"""Seconds a 409 tells the client to wait while the key's job runs (a sync job answers when it is final)."""


class KeyClaimNeeded(Exception):
    """The key this request holds unclaimed cannot be written with its job: recorded already (nothing was written),
    or a path that records its job otherwise (a cache hit, a held job) needs it claimed first."""


@dataclass
class _HeldKey:
    """The key this request holds: the job it creates is tied to it in the statement or transaction that writes the
    job, and the request's answer may be stored there too (KeyWrite)."""

    owner_id: int
    key: str
    render_job: Callable[[Job], Response]
    answered_on_acceptance: bool
    record: IdempotencyRecord | None = None
    """The key's record to write with the job (claim_on_acceptance); None once written, or if claimed before."""
    claimed_with_job: bool = False
    """Its record was written with the job: never released (its job answers it, or a rollback took both away)."""
    job_id: UUID | None = None
    """The job the key was tied to."""
    answered: bool = False
    """Whether the answer was stored with the job (then nothing more is stored)."""
    response: Response | None = None
    """That answer as rendered (None for a failed job: its request raises JobFailed), sent as stored."""


@dataclass(frozen=True)
class KeyWrite:
    """An UPDATE of the held key's record, for the statement (or transaction) that writes its job; call
    idempotency_written once that wrote."""

    statement: tuple[str, list[Any]]
    """An UPDATE of the claimed key's record, or the INSERT of `record`; either ends in a WHERE clause."""
    record: IdempotencyRecord | None = None
    """The key's record, tied to the job: it claims the key (a unique violation means it was recorded already)."""
    answers: bool = False
    """It stores the request's answer too: the job accepted (an acknowledgement) or its sync outcome."""
    response: Response | None = None
    """The answer as rendered (None for a failed sync job: its request raises JobFailed)."""


_held_key: ContextVar[_HeldKey | None] = ContextVar("idempotency_held_key", default=None)


def request_fingerprint(*, method: str, path: str, data: Any) -> str:
    """sha256 over method, path and the body as canonical JSON (key order and whitespace do not matter)."""
    body = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(f"{method.upper()}\n{path}\n{body}".encode()).hexdigest()


def _valid_key(raw: str) -> str:
    key = raw.strip()
    if len(key) > KEY_MAX_LENGTH or not re.fullmatch(KEY_PATTERN, key):
        raise InvalidInput(
            [{"field": KEY_HEADER, "message": f"must be 1..{KEY_MAX_LENGTH} printable ASCII characters"}]
        )
    return key


def idempotency_claim(
    *, user: User, key: str, fingerprint: str, ttl: int, render_job: Callable[[Job], Response] | None = None
) -> IdempotencyRecord | None:
    """Take the key for this request (returns None), or return the completed record to replay.

    Raises IdempotencyKeyReused for another request's key and IdempotencyInFlight while the first runs.
    A key whose request died is answered by the job that request created (`render_job` renders it): an async
    job at once, a sync one when it is final; a key whose request died before creating a job is taken over
    after IDEMPOTENCY_LOCK_TIMEOUT (the request timeout).
    """
    for _ in range(_CLAIM_ATTEMPTS):
        now = timezone.now()
        fresh = _fresh(fingerprint=fingerprint, ttl=ttl, now=now)
        if insert_unless_conflict(IdempotencyRecord(owner=user, key=key, **fresh), unique_fields=KEY_FIELDS):
            return None
        record = _record(user=user, key=key)
        if record is None:
            continue  # released between our insert and our read: try again
        if _stale(record, now):
            # An expired record, or one whose first request died in flight before creating a job, goes to one taker.
            stale = Q(expires_at__lte=now) | Q(status=IdempotencyStatus.IN_FLIGHT, locked_until__lte=now, job=None)
            if IdempotencyRecord.objects.filter(stale, owner=user, key=key).update(**fresh):
                return None
            continue
        if (recorded := _recorded(record, fingerprint=fingerprint, now=now, render_job=render_job)) is not None:
            return recorded
    raise _changing_hands(key)


def idempotency_lookup(
    *, user: User, key: str, fingerprint: str, render_job: Callable[[Job], Response]
) -> IdempotencyRecord | None:
    """What a recorded key answers, as idempotency_claim would (its record to replay, IdempotencyKeyReused,
    IdempotencyInFlight), without taking the key: None if it is free (or stale)."""
    for _ in range(_CLAIM_ATTEMPTS):
        now = timezone.now()
        record = _record(user=user, key=key)
        if record is None or _stale(record, now):
            return None
        if (recorded := _recorded(record, fingerprint=fingerprint, now=now, render_job=render_job)) is not None:
            return recorded
    raise _changing_hands(key)


def _record(*, user: User, key: str) -> IdempotencyRecord | None:
    return IdempotencyRecord.objects.filter(owner=user, key=key).select_related("job").first()


def _recorded(
    record: IdempotencyRecord, *, fingerprint: str, now: datetime, render_job: Callable[[Job], Response] | None
) -> IdempotencyRecord | None:
    """A live record held by another request: the record to replay, or None once this request has completed it
    from its job (read it again); raises IdempotencyKeyReused or IdempotencyInFlight."""
    if record.fingerprint != fingerprint:
        raise IdempotencyKeyReused(
            "This Idempotency-Key was used with a different request (method, path or body).", key=record.key
        )
    if record.status != IdempotencyStatus.IN_FLIGHT:
        return record
    if record.job is not None and render_job is not None and _answers_request(record.job):
        _complete_from_job(record, record.job, render_job)
        return None  # another taker may have completed it first
    retry_after = _in_flight_retry_after(record, now)
    raise IdempotencyInFlight(
        "A request with this Idempotency-Key is still in flight; retry later.",
        headers={"Retry-After": str(retry_after)},
        key=record.key,
        retry_after=retry_after,
    )


def _changing_hands(key: str) -> IdempotencyInFlight:
    return IdempotencyInFlight(
        "A request with this Idempotency-Key is changing hands; retry later.",
        headers={"Retry-After": str(JOB_IN_FLIGHT_RETRY_AFTER)},
        key=key,
        retry_after=JOB_IN_FLIGHT_RETRY_AFTER,
    )


def _fresh(*, fingerprint: str, ttl: int, now: datetime) -> dict[str, Any]:
    """A new claim's fields: in flight, locked for the request's timeout, kept for the policy's TTL."""
    return {
        "fingerprint": fingerprint,
        "status": IdempotencyStatus.IN_FLIGHT,
        "response_status": None,
        "response_body": None,
        "response_headers": {},
        "created_at": now,
        "locked_until": now + timedelta(seconds=settings.IDEMPOTENCY_LOCK_TIMEOUT),
        "expires_at": now + timedelta(seconds=ttl),
    }


def _stale(record: IdempotencyRecord, now: datetime) -> bool:
    """Expired, or in flight past its lock without a job: its request is over (the replay path reads it first)."""
    if record.expires_at <= now:
        return True
    return record.status == IdempotencyStatus.IN_FLIGHT and record.locked_until <= now and record.job_id is None


def _answers_request(job: Job) -> bool:
    """Whether the job alone can answer its request: an accepted async job, or a final sync one."""
    return job.mode == JobMode.ASYNC or job.status in FINAL_STATUSES


def _in_flight_retry_after(record: IdempotencyRecord, now: datetime) -> int:
    if record.job_id is not None:
        return JOB_IN_FLIGHT_RETRY_AFTER
    return max(1, math.ceil((record.locked_until - now).total_seconds()))


def _complete_from_job(record: IdempotencyRecord, job: Job, render_job: Callable[[Job], Response]) -> None:
    """Store, for a request that died, the response its job (record.job) gives: the one it would have sent."""
    stored, _ = _job_answer(job, render_job)
    idempotency_complete(user_id=record.owner_id, key=record.key, **stored)


def _job_answer(job: Job, render_job: Callable[[Job], Response]) -> tuple[dict[str, Any], Response | None]:
    """The response a job answering its request gives (_answers_request), as idempotency_complete stores it and as
    rendered (None for a failed sync job: its request raises JobFailed, which the error handler renders)."""
    if job.mode == JobMode.SYNC and job.status == JobStatus.FAILED:
        error = JobFailed(
            job.error_message, job_id=str(job.id), error={"code": job.error_code, "message": job.error_message}
        )
        return {"status": error.status, "body": error.problem_body(), "headers": {}}, None
    response = render_job(job)
    return _stored(response), response


def _stored(response: Response) -> dict[str, Any]:
    headers = {name: response[name] for name in REPLAYED_RESPONSE_HEADERS if response.has_header(name)}
    return {"status": response.status_code, "body": response.data, "headers": headers}


def idempotency_key_held() -> bool:
    """Whether the current request holds an Idempotency-Key (its job must be tied to it)."""
    return _held_key.get() is not None


def idempotency_claim_first() -> None:
    """Raise KeyClaimNeeded if the current request's key is to be claimed with its job: call before recording a job
    any other way than idempotency_bind_job or jobs.acceptance."""
    held = _held_key.get()
    if held is not None and held.record is not None:
        raise KeyClaimNeeded


def idempotency_bind_job(job: Job) -> None:
    """Tie the key the current request holds (if any) to the job it creates; call in the job's transaction.
    Raises KeyClaimNeeded, having written nothing, if the key is recorded already (roll the transaction back)."""
    if (write := idempotency_bind_statement(job)) is None:
        return
    if write.record is not None:
        if not insert_unless_conflict(write.record, unique_fields=KEY_FIELDS):
            raise KeyClaimNeeded
    else:
        with connection.cursor() as cursor:
            cursor.execute(*write.statement)
    idempotency_written(write)


def idempotency_bind_statement(job: Job) -> KeyWrite | None:
    """idempotency_bind_job's write (for a statement that writes the job too: jobs.acceptance): the key's record
    INSERTed with the job if it is claimed on acceptance, else an UPDATE of the claimed record. Either also stores
    the answer of a request answered by its job as accepted (`answered_on_acceptance`: an acknowledgement that
    waits for nothing) if the job is queued. None when the request holds no key."""
    held = _held_key.get()
    if held is None:
        return None
    held.job_id = job.pk
    values: dict[str, Any] = {"job_id": job.pk}
    response = None
    answers = held.answered_on_acceptance and job.status == JobStatus.QUEUED
    if answers:
        stored, response = _job_answer(job, held.render_job)
        values.update(_completed(**stored))
    if held.record is not None:
        record = copy.copy(held.record)
        for name, value in values.items():
            setattr(record, name, value)
        into, row, params = insert_row(record)
        return KeyWrite(
            statement=(f"{into} SELECT {row} WHERE true", params), record=record, answers=answers, response=response
        )
    where = _in_flight(held.owner_id, held.key)
    statement = update_where_statement(IdempotencyRecord, where=where, values=values)
    return KeyWrite(statement=statement, answers=answers, response=response)


def _in_flight(owner_id: int, key: str) -> dict[str, Any]:
    return {"owner_id": owner_id, "key": key, "status": IdempotencyStatus.IN_FLIGHT}


def idempotency_answer(job: Job, *, outcome: dict[str, Any]) -> KeyWrite | None:
    """For a statement that writes a sync job's outcome (jobs.execution on PostgreSQL): the UPDATE that stores the
    answer of the request holding the job's key, rendered from the job as the outcome leaves it, so the key
    completes without a commit of its own. None when no key is tied to this job."""
    held = _held_key.get()
    if held is None or held.job_id != job.pk or job.mode != JobMode.SYNC:
        return None
    final = copy.copy(job)
    for name, value in outcome.items():
        setattr(final, name, value)
    stored, response = _job_answer(final, held.render_job)
    where = _in_flight(held.owner_id, held.key)
    statement = update_where_statement(IdempotencyRecord, where=where, values=_completed(**stored))
    return KeyWrite(statement=statement, answers=True, response=response)


def idempotency_written(write: KeyWrite) -> None:
    """The statement carrying `write` wrote: the key is claimed (if `write` claims it), and once it commits, an
    answer it stored is the request's (sent as stored; nothing more is stored)."""
    held = _held_key.get()
    if held is not None and write.record is not None:
        held.record, held.claimed_with_job = None, True
    if write.answers:
        transaction.on_commit(partial(_answered, write))


def _answered(write: KeyWrite) -> None:
    if (held := _held_key.get()) is not None:
        held.answered, held.response = True, write.response


def idempotency_answered_response(job: Job) -> Response | None:
    """The response stored with this job for the current request (KeyWrite), if any: sent as stored."""
    held = _held_key.get()
    return held.response if held is not None and held.job_id == job.pk else None


def idempotency_complete(*, user_id: int, key: str, status: int, body: Any, headers: dict[str, str]) -> None:
    update_where(
        IdempotencyRecord, where=_in_flight(user_id, key), values=_completed(status=status, body=body, headers=headers)
    )


def _completed(*, status: int, body: Any, headers: dict[str, str]) -> dict[str, Any]:
    return {
        "status": IdempotencyStatus.COMPLETED,
        "response_status": status,
        "response_body": body,
        "response_headers": headers,
    }


def idempotency_release(*, user_id: int, key: str) -> None:
    """The request was rejected before it executed: store nothing, so the key can be used again.

    A key already tied to a job stays: that job answers it (see idempotency_claim).
    """
    IdempotencyRecord.objects.filter(owner_id=user_id, key=key, status=IdempotencyStatus.IN_FLIGHT, job=None).delete()


def _replay(record: IdempotencyRecord) -> Response:
    status = record.response_status or 200
    return Response(
        record.response_body,
        status=status,
        headers={**record.response_headers, REPLAYED_HEADER: "true"},
        content_type=PROBLEM_CONTENT_TYPE if status >= 400 else None,
    )


def idempotent_response(
    *,
    request: AuthenticatedRequest,
    policy: EndpointPolicy,
    run: Callable[[], Response],
    render_job: Callable[[Job], Response],
    answered_on_acceptance: bool = False,
    claim_on_acceptance: bool = False,
) -> Response:
    """Run `run` once per (user, Idempotency-Key) within the policy's TTL; without the header, just run it.

    `render_job` renders a job as `run` would have answered: it answers the key if this request dies.
    `answered_on_acceptance`: `run` answers render_job of its job as accepted, if queued (an acknowledgement that
    waits for nothing), so the answer is stored in the statement that accepts the job.
    `claim_on_acceptance`: `run` only reads until it accepts a job through idempotency_bind_job or jobs.acceptance,
    which claim the key with the job (the module's docstring).
    """
    raw = request.headers.get(KEY_HEADER)
    if raw is None:
        return run()
    user, key = request.user, _valid_key(raw)
    fingerprint = request_fingerprint(method=request.method or "", path=request.path, data=request.data)
    held = partial(
        _HeldKey, owner_id=user.pk, key=key, render_job=render_job, answered_on_acceptance=answered_on_acceptance
    )
    claim = partial(
        idempotency_claim,
        user=user,
        key=key,
        fingerprint=fingerprint,
        ttl=policy.idempotency_ttl,
        render_job=render_job,
    )
    if claim_on_acceptance:
        fresh = _fresh(fingerprint=fingerprint, ttl=policy.idempotency_ttl, now=timezone.now())
        unclaimed = held(record=IdempotencyRecord(owner_id=user.pk, key=key, **fresh))
        try:
            return _run_holding(unclaimed, run)
        except KeyClaimNeeded:
            pass  # answered below as a claim made first answers
        except Exception:
            if unclaimed.record is None:
                raise
            # Refused before its key was written: a request recorded under the key is answered as recorded instead
            # (looked up, not claimed: a claim held now could turn the key's own first request away).
            if record := idempotency_lookup(user=user, key=key, fingerprint=fingerprint, render_job=render_job):
                return _replay(record)
            raise
    if (record := claim()) is not None:
        return _replay(record)
    return _run_holding(held(), run)


def _run_holding(held: _HeldKey, run: Callable[[], Response]) -> Response:
    """`run` holding the key: its answer is stored (if `run` did not store it with its job), an executed error's
    too; any other error releases a claimed key. A key still unclaimed afterwards is the caller's to settle."""
    user_id, key = held.owner_id, held.key
    token = _held_key.set(held)
    try:
        response = run()
    except EXECUTED_ERRORS as exc:
        if held.record is None and not held.answered:
            idempotency_complete(user_id=user_id, key=key, status=exc.status, body=exc.problem_body(), headers={})
        raise
    except BaseException:
        if held.record is None and not held.claimed_with_job:
            idempotency_release(user_id=user_id, key=key)
        raise
    finally:
        _held_key.reset(token)
    if held.record is None and not held.answered:
        idempotency_complete(user_id=user_id, key=key, **_stored(response))
    return response
