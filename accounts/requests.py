"""Typed views of a DRF request past EndpointView's gate, for annotations and casts only (never instantiated).

The gate sets these attributes at run time, where mypy cannot see them; views and gate checks name these
classes instead of `Request` so the attributes and the narrowed user are typed.
"""

from django.http import HttpRequest
from rest_framework.request import Request

from accounts.models import EndpointPolicy, User


class PolicyRequest(Request):
    """A request once EndpointView.initial ran: its governing policies are set; the caller may be anonymous."""

    policy: EndpointPolicy
    authenticated_policy: EndpointPolicy | None
    rate_limit_headers: dict[str, str]


class AuthenticatedRequest(PolicyRequest):
    """A request a view handles behind a policy that requires authentication: the caller is a User."""

    user: User  # type: ignore[assignment]  # narrows Request.user, which the stubs type as User | AnonymousUser


class StaffHttpRequest(HttpRequest):
    """A Django request the admin site lets in: its user is active staff, so a User."""

    user: User
