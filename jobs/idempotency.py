"""Idempotency keys (Stripe / IETF draft semantics): one execution per user and key, replayed after.

Records live in the database, not Redis: the stored response belongs to an accepted request (a job),
and nothing accepted is kept only in Redis; the unique (owner, key) constraint makes the claim atomic
across processes without a second source of truth that a Redis flush could lose.
"""

import hashlib
import json
import re
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone
from rest_framework.request import Request
from rest_framework.response import Response

from accounts.models import User
from jobs.models import EndpointPolicy, IdempotencyRecord, IdempotencyStatus
from jobsite.errors import (
    PROBLEM_CONTENT_TYPE,
    IdempotencyInFlight,
    IdempotencyKeyReused,
    InvalidInput,
    JobFailed,
    problem,
)

KEY_HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
KEY_MAX_LENGTH = 255
"""Longest Idempotency-Key accepted (the column's size)."""
KEY_PATTERN = r"^[\x21-\x7e]+( +[\x21-\x7e]+)*$"
"""Printable ASCII, no leading or trailing space (HTTP strips those anyway); also the schema's pattern."""

REPLAYED_RESPONSE_HEADERS = ("Location",)
"""Response headers stored with the body and replayed."""

EXECUTED_ERRORS = (JobFailed,)
"""Errors raised after the job ran: their responses are stored and replayed; any other error releases the key."""

_CLAIM_ATTEMPTS = 3


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


def idempotency_claim(*, user: User, key: str, fingerprint: str, ttl: int) -> IdempotencyRecord | None:
    """Take the key for this request (returns None), or return the completed record to replay.

    Raises IdempotencyKeyReused for another request's key and IdempotencyInFlight while the first runs.
    """
    for _ in range(_CLAIM_ATTEMPTS):
        now = timezone.now()
        fresh = {
            "fingerprint": fingerprint,
            "status": IdempotencyStatus.IN_FLIGHT,
            "response_status": None,
            "response_body": None,
            "response_headers": {},
            "created_at": now,
            "locked_until": now + timedelta(seconds=settings.IDEMPOTENCY_LOCK_TIMEOUT),
            "expires_at": now + timedelta(seconds=ttl),
        }
        try:
            with transaction.atomic():
                IdempotencyRecord.objects.create(owner=user, key=key, **fresh)
            return None
        except IntegrityError:
            pass
        # An expired record, or one whose first request died in flight, goes to one taker (conditional UPDATE).
        stale = Q(expires_at__lte=now) | Q(status=IdempotencyStatus.IN_FLIGHT, locked_until__lte=now)
        if IdempotencyRecord.objects.filter(stale, owner=user, key=key).update(**fresh):
            return None
        record = IdempotencyRecord.objects.filter(owner=user, key=key).first()
        if record is None:
            continue  # released between our insert and our read: try again
        if record.fingerprint != fingerprint:
            raise IdempotencyKeyReused(
                "This Idempotency-Key was used with a different request (method, path or body).", key=key
            )
        if record.status == IdempotencyStatus.IN_FLIGHT:
            raise IdempotencyInFlight("A request with this Idempotency-Key is still in flight; retry later.", key=key)
        return record
    raise IdempotencyInFlight("A request with this Idempotency-Key is changing hands; retry later.", key=key)


def idempotency_complete(*, user: User, key: str, status: int, body: Any, headers: dict[str, str]) -> None:
    IdempotencyRecord.objects.filter(owner=user, key=key, status=IdempotencyStatus.IN_FLIGHT).update(
        status=IdempotencyStatus.COMPLETED, response_status=status, response_body=body, response_headers=headers
    )


def idempotency_release(*, user: User, key: str) -> None:
    """The request was rejected before it executed: store nothing, so the key can be used again."""
    IdempotencyRecord.objects.filter(owner=user, key=key, status=IdempotencyStatus.IN_FLIGHT).delete()


def _replay(record: IdempotencyRecord) -> Response:
    status = record.response_status or 200
    return Response(
        record.response_body,
        status=status,
        headers={**record.response_headers, REPLAYED_HEADER: "true"},
        content_type=PROBLEM_CONTENT_TYPE if status >= 400 else None,
    )


def idempotent_response(*, request: Request, policy: EndpointPolicy, run: Callable[[], Response]) -> Response:
    """Run `run` once per (user, Idempotency-Key) within the policy's TTL; without the header, just run it."""
    raw = request.headers.get(KEY_HEADER)
    if raw is None:
        return run()
    user, key = request.user, _valid_key(raw)
    fingerprint = request_fingerprint(method=request.method, path=request.path, data=request.data)
    record = idempotency_claim(user=user, key=key, fingerprint=fingerprint, ttl=policy.idempotency_ttl)
    if record is not None:
        return _replay(record)
    try:
        response = run()
    except EXECUTED_ERRORS as exc:
        body = problem(exc.status, exc.code, exc.title, exc.detail, **exc.extra)
        idempotency_complete(user=user, key=key, status=exc.status, body=body, headers={})
        raise
    except BaseException:
        idempotency_release(user=user, key=key)
        raise
    headers = {name: response[name] for name in REPLAYED_RESPONSE_HEADERS if response.has_header(name)}
    idempotency_complete(user=user, key=key, status=response.status_code, body=response.data, headers=headers)
    return response


def idempotency_purge_expired() -> int:
    """Delete expired records; returns how many went."""
    deleted, _ = IdempotencyRecord.objects.filter(expires_at__lte=timezone.now()).delete()
    return deleted
