"""The API's edge: what Django would otherwise answer with HTML, a redirect or a cookie, answered as the API does.

- A Host header outside ALLOWED_HOSTS: 400 problem+json (Django's DisallowedHost page otherwise; HostCheckMiddleware).
- A path without its trailing slash (or a compatible route with one): served as the route it names, for every
  method; APPEND_SLASH would redirect a GET and crash on a POST.
- A path no route matches: 404 problem+json, with DEBUG on too (Django's technical 404 page otherwise).
- A request body without a Content-Type: 415 naming application/json (DRF would read it as an empty body).
- API responses set no cookies (the session and CSRF cookies belong to the admin and the login pages).
"""

from collections.abc import Callable

from django.core.exceptions import DisallowedHost
from django.http import HttpRequest, HttpResponse
from django.urls import Resolver404, resolve

from jobsite.errors import BadRequest, NotFound, UnsupportedMediaType, problem_response, wants_html_errors

COOKIE_PATH_PREFIXES = ("/admin/", "/api-auth/")
"""Paths that may set cookies: the admin and the session login of the browsable API."""

BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


def _resolves(path: str) -> bool:
    try:
        resolve(path)
    except Resolver404:
        return False
    return True


def _has_body(request: HttpRequest) -> bool:
    length = request.META.get("CONTENT_LENGTH") or "0"
    return (length.isdigit() and int(length) > 0) or "HTTP_TRANSFER_ENCODING" in request.META


HOST_CHECK_MIDDLEWARE = "jobsite.edge.HostCheckMiddleware"
"""First of all middleware (jobsite.tracing keeps it first): everything after it may read the Host header."""


class HostCheckMiddleware:
    """A Host header outside ALLOWED_HOSTS: 400 problem+json, with DEBUG on too (Django's debug page otherwise)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        try:
            request.get_host()
        except DisallowedHost:
            return problem_response(BadRequest("The Host header names a host this service does not serve."))
        return self.get_response(request)


class ApiEdgeMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if not wants_html_errors(request):
            refusal = self.route(request)
            if refusal is not None:
                return refusal
        response = self.get_response(request)
        if not request.path.startswith(COOKIE_PATH_PREFIXES) and not _is_html(response):
            response.cookies.clear()
        return response

    def route(self, request: HttpRequest) -> HttpResponse | None:
        """Serve the slash-toggled twin of an unknown path, or refuse it; refuse a body without a media type."""
        path = request.path_info
        if not _resolves(path):
            twin = path.removesuffix("/") if path.endswith("/") else f"{path}/"
            if twin == path or not twin or not _resolves(twin):
                return problem_response(NotFound("No such resource."))
            request.path_info = twin
            request.path = request.path.removesuffix(path) + twin
        if request.method in BODY_METHODS and _has_body(request) and not request.META.get("CONTENT_TYPE"):
            return problem_response(UnsupportedMediaType())
        return None


def _is_html(response: HttpResponse) -> bool:
    return response.get("Content-Type", "").startswith("text/html")
