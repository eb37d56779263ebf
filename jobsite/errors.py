"""One exception hierarchy for the whole service, rendered as RFC 9457 problem+json in one handler."""

import sys
from typing import Any

from django.conf import settings
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.db import InterfaceError, OperationalError
from django.http import Http404, HttpRequest, JsonResponse
from redis.exceptions import RedisError
from rest_framework import exceptions as drf
from rest_framework.response import Response

PROBLEM_CONTENT_TYPE = "application/problem+json"

BACKING_SERVICE_DOWN = (RedisError, OperationalError, InterfaceError)
"""Errors of an unreachable Redis or database: the client is told to retry (503), never shown a 500."""


class ServiceError(Exception):
    """Base of every error a service raises on purpose; carries its HTTP status and stable code."""

    status = 500
    code = "internal_error"
    title = "Internal error"

    def __init__(self, detail: str = "", *, headers: dict[str, str] | None = None, **extra: Any):
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        self.headers = headers or {}
        self.extra = extra


class InvalidInput(ServiceError):
    status, code, title = 400, "validation_error", "Invalid input"

    def __init__(self, errors: list[dict[str, str]], detail: str = "The request has invalid fields."):
        super().__init__(detail, errors=errors)


class CallbackUrlForbidden(ServiceError):
    status, code, title = 400, "callback_url_forbidden", "Callback URL forbidden"


class NotAuthenticated(ServiceError):
    status, code, title = 401, "not_authenticated", "Not authenticated"


class MfaRequired(ServiceError):
    status, code, title = 401, "mfa_required", "MFA code required"


class MfaInvalid(ServiceError):
    status, code, title = 401, "mfa_invalid", "MFA code invalid"


class PermissionDenied(ServiceError):
    status, code, title = 403, "permission_denied", "Permission denied"


class IpNotAllowed(ServiceError):
    status, code, title = 403, "ip_not_allowed", "IP address not allowed"


class NotFound(ServiceError):
    status, code, title = 404, "not_found", "Not found"


class NotCancellable(ServiceError):
    status, code, title = 409, "not_cancellable", "Job cannot be canceled"


class IdempotencyInFlight(ServiceError):
    status, code, title = 409, "idempotency_in_flight", "Idempotent request in flight"


class IdempotencyKeyReused(ServiceError):
    status, code, title = 422, "idempotency_key_reused", "Idempotency key reused"


class RateLimited(ServiceError):
    status, code, title = 429, "rate_limited", "Rate limited"


class JobFailed(ServiceError):
    status, code, title = 502, "job_failed", "Job failed"


class QueueFull(ServiceError):
    status, code, title = 503, "queue_full", "Queue full"


class InsufficientCredits(ServiceError):
    status, code, title = 402, "insufficient_credits", "Insufficient credits"

    def __init__(self, *, balance: int, cost: int):
        super().__init__(f"The job costs {cost} credits; the balance is {balance}.", balance=balance, cost=cost)


class CircuitOpen(ServiceError):
    status, code, title = 503, "circuit_open", "Circuit open"


class ServiceUnavailable(ServiceError):
    status, code, title = 503, "service_unavailable", "Service unavailable"

    def __init__(self, detail: str = "", **extra: Any):
        retry_after = settings.SERVICE_UNAVAILABLE_RETRY_AFTER
        super().__init__(detail, headers={"Retry-After": str(retry_after)}, retry_after=retry_after, **extra)


def problem(
    status: int, code: str, title: str, detail: str, *, headers: dict[str, str] | None = None, **extra: Any
) -> dict[str, Any]:
    return {
        "type": f"urn:jobsite:problem:{code}",
        "title": title,
        "status": status,
        "detail": detail,
        "code": code,
        **extra,
    }


def _field_errors(detail: Any, prefix: str = "") -> list[dict[str, str]]:
    """Flatten DRF's nested error detail into [{field, message}] with dotted field paths."""
    if isinstance(detail, dict):
        errors = []
        for key, value in detail.items():
            field = prefix if key == "non_field_errors" else (f"{prefix}.{key}" if prefix else str(key))
            errors.extend(_field_errors(value, field))
        return errors
    if isinstance(detail, list):
        if all(not isinstance(item, dict | list) for item in detail):
            return [{"field": prefix or "body", "message": str(item)} for item in detail]
        errors = []
        for index, item in enumerate(detail):
            errors.extend(_field_errors(item, f"{prefix}.{index}" if prefix else str(index)))
        return errors
    return [{"field": prefix or "body", "message": str(detail)}]


def _as_service_error(exc: Exception) -> ServiceError | None:
    """Translate DRF's and Django's exceptions into ours, so one renderer serves them all."""
    if isinstance(exc, ServiceError):
        return exc
    if isinstance(exc, BACKING_SERVICE_DOWN):  # refuse and roll back, never crash: nothing was accepted
        return ServiceUnavailable("A backing service is unreachable; try again shortly.")
    if isinstance(exc, drf.ValidationError):
        return InvalidInput(_field_errors(exc.detail))
    if isinstance(exc, drf.ParseError):
        return InvalidInput([{"field": "body", "message": str(exc.detail)}], "The request body is not valid JSON.")
    if isinstance(exc, drf.NotAuthenticated | drf.AuthenticationFailed):
        return NotAuthenticated(str(exc.detail))
    if isinstance(exc, drf.PermissionDenied | DjangoPermissionDenied):
        return PermissionDenied(str(getattr(exc, "detail", "")) or PermissionDenied.title)
    if isinstance(exc, drf.NotFound | Http404):
        return NotFound("No such resource.")
    if isinstance(exc, drf.APIException):
        error = ServiceError(str(exc.detail))
        error.status, error.code, error.title = exc.status_code, exc.default_code, str(exc.default_detail)
        return error
    return None


def problem_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """DRF EXCEPTION_HANDLER: every error leaves as problem+json with a stable `code`."""
    error = _as_service_error(exc)
    if error is None:
        return None  # a bug: Django's handler500 renders it, still as problem+json
    # Imported here: rest_framework.views loads the authentication classes, which raise these errors.
    from rest_framework.views import set_rollback

    set_rollback()
    body = problem(error.status, error.code, error.title, error.detail, **error.extra)
    headers = dict(error.headers)
    if isinstance(exc, drf.APIException) and getattr(exc, "auth_header", None):
        headers["WWW-Authenticate"] = exc.auth_header
    view = context.get("view")
    if error.status == 401 and "WWW-Authenticate" not in headers and view is not None:
        # Every 401 names the scheme to use (RFC 9110), also when a permission check raised it.
        challenge = view.get_authenticate_header(context["request"])
        if challenge:
            headers["WWW-Authenticate"] = challenge
    wait = getattr(exc, "wait", None)
    if wait is not None:
        headers["Retry-After"] = str(max(1, int(wait + 0.999)))
    return Response(body, status=error.status, headers=headers, content_type=PROBLEM_CONTENT_TYPE)


def problem_response(error: ServiceError) -> JsonResponse:
    """Plain-Django twin of the DRF handler, for code outside DRF views (middleware, handler404/500)."""
    body = problem(error.status, error.code, error.title, error.detail, **error.extra)
    response = JsonResponse(body, status=error.status, content_type=PROBLEM_CONTENT_TYPE)
    for name, value in error.headers.items():
        response[name] = value
    return response


def handler404(request: HttpRequest, exception: Exception | None = None) -> JsonResponse:
    return problem_response(NotFound("No such resource."))


def handler500(request: HttpRequest) -> JsonResponse:
    # Django calls this inside its except block: a database or Redis outage outside DRF (middleware) is a 503 too.
    if isinstance(sys.exc_info()[1], BACKING_SERVICE_DOWN):
        return problem_response(ServiceUnavailable("A backing service is unreachable; try again shortly."))
    return problem_response(ServiceError("An unexpected error occurred; it has been logged."))
