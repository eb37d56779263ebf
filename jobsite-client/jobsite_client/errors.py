"""Exceptions: one class per family of the API's stable problem `code`s, all under `JobsiteError`.

Every HTTP error the service answers is RFC 9457 problem+json; `APIError` carries its members, and
`error_for` picks the class from `code` (or, for a code this client does not know yet, from the status).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from jobsite_client.models import FieldError, Job, Problem, parse


class JobsiteError(Exception):
    """Base of every error this client raises (transport errors stay httpx's own `httpx.HTTPError`)."""


class APIError(JobsiteError):
    """The service answered an error: the problem+json members, the raw body, and `Retry-After` if sent."""

    def __init__(self, problem: Problem, body: Mapping[str, Any], retry_after: float | None) -> None:
        super().__init__(f"{problem.status} {problem.code}: {problem.detail}")
        self.problem = problem
        self.body = dict(body)
        self.type = problem.type
        self.title = problem.title
        self.status = problem.status
        self.detail = problem.detail
        self.code = problem.code
        self.errors: list[FieldError] = problem.errors
        self.retry_after = retry_after
        self.limit: dict[str, Any] | None = body.get("limit")


class ValidationError(APIError):
    """400 `validation_error`, `callback_url_forbidden`, `bad_request`; `errors` lists `{field, message}`."""


class AuthenticationFailed(APIError):
    """401: `not_authenticated`, `mfa_required`, `mfa_invalid`."""


class PermissionDenied(APIError):
    """403: `permission_denied` (role or scope), `ip_not_allowed`, `csrf_failed`, `priority_not_allowed`."""


class InsufficientCredits(APIError):
    """402 `insufficient_credits`: the job would cost `cost`, the balance is `balance`."""

    def __init__(self, problem: Problem, body: Mapping[str, Any], retry_after: float | None) -> None:
        super().__init__(problem, body, retry_after)
        self.balance: int | None = body.get("balance")
        self.cost: int | None = body.get("cost")


class NotFound(APIError):
    """404 `not_found`: no such job (another user's job too), or no such route."""


class JobExpired(NotFound):
    """410 `job_expired`: the job passed its retention and was deleted with its results (its owner's view;
    anyone else gets `NotFound`). A subclass of `NotFound`: code that handles a missing job handles this."""


class Conflict(APIError):
    """409: the request conflicts with the resource's state (`not_cancellable`)."""


class IdempotencyError(Conflict):
    """An `Idempotency-Key` problem: 409 `idempotency_in_flight` or 422 `idempotency_key_reused`."""


class RateLimited(APIError):
    """429 `rate_limited` (a rate limit or a concurrency cap): retry after `retry_after` seconds."""


class JobFailed(APIError):
    """502 `job_failed`: a sync job ran and failed; `job_id` names its record, `error` says why."""

    def __init__(self, problem: Problem, body: Mapping[str, Any], retry_after: float | None) -> None:
        super().__init__(problem, body, retry_after)
        self.job_id: str | None = body.get("job_id")
        self.error: dict[str, Any] | None = body.get("error")


class ServiceUnavailable(APIError):
    """503: `queue_full`, `circuit_open`, `service_unavailable`; `retry_after` when the service said."""


class WaitTimeout(JobsiteError, TimeoutError):
    """`wait()` ran out of time before the job finished; `job` is its last state seen."""

    def __init__(self, job: Job, timeout: float) -> None:
        super().__init__(f"job {job.id} still {job.status} after {timeout:g} s")
        self.job = job


class InvalidWebhook(JobsiteError):
    """A webhook delivery failed verification: missing headers, bad signature, stale timestamp, bad JSON."""


ERROR_CLASSES: dict[str, type[APIError]] = {
    "validation_error": ValidationError,
    "callback_url_forbidden": ValidationError,
    "bad_request": ValidationError,
    "not_authenticated": AuthenticationFailed,
    "mfa_required": AuthenticationFailed,
    "mfa_invalid": AuthenticationFailed,
    "permission_denied": PermissionDenied,
    "ip_not_allowed": PermissionDenied,
    "csrf_failed": PermissionDenied,
    "insufficient_credits": InsufficientCredits,
    "not_found": NotFound,
    "job_expired": JobExpired,
    "not_cancellable": Conflict,
    "idempotency_in_flight": IdempotencyError,
    "idempotency_key_reused": IdempotencyError,
    "rate_limited": RateLimited,
    "job_failed": JobFailed,
    "queue_full": ServiceUnavailable,
    "circuit_open": ServiceUnavailable,
    "service_unavailable": ServiceUnavailable,
}
"""The stable codes of API.md's error table (and docs/api.md's additions), each to its family."""

STATUS_CLASSES: dict[int, type[APIError]] = {
    400: ValidationError,
    401: AuthenticationFailed,
    402: InsufficientCredits,
    403: PermissionDenied,
    404: NotFound,
    409: Conflict,
    410: JobExpired,
    429: RateLimited,
    503: ServiceUnavailable,
}
"""Fallback for a code this client does not know (a newer service) or a body that is not problem+json."""


def error_for(status: int, body: Any, retry_after_header: str | None) -> APIError:
    """The typed error for an error response; a body that is not a problem object still gives one."""
    members: Mapping[str, Any] = body if isinstance(body, Mapping) else {}
    problem = parse(
        Problem,
        {
            "type": "about:blank",
            "title": f"HTTP {status}",
            "detail": "" if members else f"the service answered {status} without a problem+json body",
            "code": "",
            **members,
            "status": status,
        },
    )
    retry_after = members.get("retry_after")
    if retry_after is None and retry_after_header is not None and retry_after_header.strip().isdigit():
        retry_after = int(retry_after_header)
    cls = ERROR_CLASSES.get(problem.code) or STATUS_CLASSES.get(status, APIError)
    return cls(problem, members, retry_after)
