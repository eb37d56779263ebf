"""One exception hierarchy for the whole service, rendered as RFC 9457 problem+json in one handler.

Django's own refusals (handler400/403/404/500, CSRF_FAILURE_VIEW) route here too for every path outside
the admin site, so an API client never sees an HTML error page.
"""

import sys
from http import HTTPStatus
from typing import Any

from django.conf import settings
from django.core.exceptions import DisallowedHost, RequestDataTooBig, SuspiciousOperation
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.db import InterfaceError as DatabaseInterfaceError
from django.db import OperationalError as DatabaseOperationalError
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.views import defaults
from django.views.csrf import csrf_failure as django_csrf_failure
from redis.exceptions import RedisError
from rest_framework import exceptions as drf
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response

PROBLEM_CONTENT_TYPE = "application/problem+json"

JSON_MEDIA_TYPE = "application/json"
"""The one request body media type the API parses."""

BACKING_SERVICE_DOWN = (RedisError, DatabaseOperationalError, DatabaseInterfaceError)
"""Errors of an unreachable Redis or database: the client is told to retry (503), never shown a 500."""

HTML_PATH_PREFIXES = ("/admin/",)
"""Paths whose errors stay Django's HTML pages (people in a browser); every other path answers problem+json."""


class ServiceError(drf.APIException):
    """Base of every error a service raises on purpose; carries its HTTP status and stable code.

    A DRF APIException, so that DRF code that expects one (the browsable API's permission re-checks while it
    renders) treats ours as refusals, never as crashes.
    """

    status = 500
    code = "internal_error"
    title = "Internal error"
    detail: str  # type: ignore[assignment]  # always one message here; DRF's own errors may carry lists and dicts

    def __init__(self, detail: str = "", *, headers: dict[str, str] | None = None, **extra: Any):
        super().__init__(detail or self.title, self.code)
        self.detail = detail or self.title
        self.headers = headers or {}
        self.extra = extra

    @property
    def status_code(self) -> int:  # type: ignore[override]  # DRF's name for `status`, read-only: one source
        return self.status

    def problem_body(self) -> dict[str, Any]:
        """This error as an RFC 9457 problem document."""
        return problem(self.status, self.code, self.title, self.detail, **self.extra)


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


class PriorityNotAllowed(ServiceError):
    """403, not 400: the request is well formed; the caller's policy does not grant that priority (like a scope)."""

    status, code, title = 403, "priority_not_allowed", "Priority not allowed"


class NotFound(ServiceError):
    status, code, title = 404, "not_found", "Not found"


class BadRequest(ServiceError):
    """A request Django refuses before any view runs (a Host header not in ALLOWED_HOSTS, a malformed request)."""

    status, code, title = 400, "bad_request", "Bad request"


class CsrfFailed(ServiceError):
    status, code, title = 403, "csrf_failed", "CSRF check failed"


class MethodNotAllowed(ServiceError):
    status, code, title = 405, "method_not_allowed", "Method not allowed"


class NotAcceptable(ServiceError):
    status, code, title = 406, "not_acceptable", "Not acceptable"


class PayloadTooLarge(ServiceError):
    status, code, title = 413, "payload_too_large", "Payload too large"


class UnsupportedMediaType(ServiceError):
    status, code, title = 415, "unsupported_media_type", "Unsupported media type"

    def __init__(self, media_type: str = ""):
        got = f"got {media_type!r}" if media_type else "no Content-Type was sent"
        super().__init__(f"Send the request body as JSON with Content-Type: {JSON_MEDIA_TYPE} ({got}).")


class NotCancellable(ServiceError):
    status, code, title = 409, "not_cancellable", "Job cannot be canceled"


class JobExpired(ServiceError):
    status, code, title = 410, "job_expired", "Job expired"


class NotRedeliverable(ServiceError):
    status, code, title = 409, "not_redeliverable", "Webhook cannot be redelivered"


class WebhookSecretMissing(ServiceError):
    status, code, title = 409, "webhook_secret_missing", "No webhook signing secret"


class UploadOffsetMismatch(ServiceError):
    status, code, title = 409, "upload_offset_mismatch", "Upload offset mismatch"

    def __init__(self, *, offset: int, sent: int):
        super().__init__(
            f"The upload holds {offset} bytes; this chunk claims to start at {sent}: resume from {offset}.",
            headers={"Upload-Offset": str(offset)},
            offset=offset,
        )


class UploadIncomplete(ServiceError):
    status, code, title = 409, "upload_incomplete", "Upload incomplete"


class IdempotencyInFlight(ServiceError):
    status, code, title = 409, "idempotency_in_flight", "Idempotent request in flight"


class IdempotencyKeyReused(ServiceError):
    status, code, title = 422, "idempotency_key_reused", "Idempotency key reused"


class RateLimited(ServiceError):
    status, code, title = 429, "rate_limited", "Rate limited"


class TooManyStreams(ServiceError):
    status, code, title = 429, "too_many_streams", "Too many event streams"


class JobFailed(ServiceError):
    status, code, title = 502, "job_failed", "Job failed"


class QueueFull(ServiceError):
    status, code, title = 503, "queue_full", "Queue full"


class InsufficientCredits(ServiceError):
    status, code, title = 402, "insufficient_credits", "Insufficient credits"

    def __init__(self, *, balance: int, cost: int, what: str = "job"):
        super().__init__(f"The {what} costs {cost} credits; the balance is {balance}.", balance=balance, cost=cost)


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


def _field_errors(detail: object, prefix: str = "") -> list[dict[str, str]]:
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
    if isinstance(exc, DatabaseOperationalError | DatabaseInterfaceError):  # down, or out of connections
        return ServiceUnavailable("The database is unreachable; try again shortly.")
    if isinstance(exc, RedisError):  # limits, queues, cache and circuit live there: refuse, never crash
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
    if isinstance(exc, drf.MethodNotAllowed):
        return MethodNotAllowed(str(exc.detail))
    if isinstance(exc, drf.UnsupportedMediaType):
        return UnsupportedMediaType(getattr(exc, "media_type", ""))
    if isinstance(exc, drf.NotAcceptable):
        return NotAcceptable(f"This endpoint answers {JSON_MEDIA_TYPE}.")
    if isinstance(exc, RequestDataTooBig):
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        return PayloadTooLarge(f"The request body exceeds {limit} bytes.", limit=limit)
    if isinstance(exc, DisallowedHost):
        return BadRequest("The Host header names a host this service does not serve.")
    if isinstance(exc, SuspiciousOperation):
        return BadRequest("The request is malformed.")
    if isinstance(exc, drf.APIException):
        error = ServiceError(str(exc.detail))
        error.status, error.code = exc.status_code, exc.default_code
        error.title = HTTPStatus(exc.status_code).phrase  # DRF's default_detail may hold a {placeholder}
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
    # Problems are JSON whatever the Accept header asked for (RFC 9457); never the browsable API's HTML.
    context["request"].accepted_renderer = JSONRenderer()
    context["request"].accepted_media_type = PROBLEM_CONTENT_TYPE
    body = error.problem_body()
    headers = dict(error.headers)
    auth_header = getattr(exc, "auth_header", None) if isinstance(exc, drf.APIException) else None
    if auth_header:
        headers["WWW-Authenticate"] = auth_header
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
    body = error.problem_body()
    response = JsonResponse(body, status=error.status, content_type=PROBLEM_CONTENT_TYPE)
    for name, value in error.headers.items():
        response[name] = value
    return response


def wants_html_errors(request: HttpRequest) -> bool:
    return request.path.startswith(HTML_PATH_PREFIXES)


def handler400(request: HttpRequest, exception: Exception) -> HttpResponse:
    if wants_html_errors(request):
        return defaults.bad_request(request, exception)
    return problem_response(_as_service_error(exception) or BadRequest("The request is malformed."))


def handler403(request: HttpRequest, exception: Exception) -> HttpResponse:
    if wants_html_errors(request):
        return defaults.permission_denied(request, exception)
    return problem_response(PermissionDenied(str(exception) or PermissionDenied.title))


def handler404(request: HttpRequest, exception: Exception) -> HttpResponse:
    if wants_html_errors(request):
        return defaults.page_not_found(request, exception)
    return problem_response(NotFound("No such resource."))


def handler500(request: HttpRequest) -> HttpResponse:
    if wants_html_errors(request):
        return defaults.server_error(request)
    # Django calls this inside its except block: a database or Redis outage outside DRF (middleware) is a 503 too.
    if isinstance(sys.exc_info()[1], BACKING_SERVICE_DOWN):
        return problem_response(ServiceUnavailable("A backing service is unreachable; try again shortly."))
    return problem_response(ServiceError("An unexpected error occurred; it has been logged."))


def csrf_failure(request: HttpRequest, reason: str = "") -> HttpResponse:
    """CSRF_FAILURE_VIEW: a form post (DRF's login page, a session-authenticated write) without a valid token."""
    if wants_html_errors(request):
        return django_csrf_failure(request, reason)
    return problem_response(CsrfFailed(f"CSRF verification failed: {reason}" if reason else CsrfFailed.title))
