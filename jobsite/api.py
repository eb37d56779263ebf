"""The base of every policy-governed API view: it loads the endpoint's policy before DRF's checks."""

from typing import Any, ClassVar

from django.conf import settings
from django.utils.module_loading import import_string
from drf_spectacular.openapi import AutoSchema
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.pagination import CursorPagination
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from jobsite.logs import bind_context

PROBLEM = OpenApiResponse(description="problem+json error (see `code`)")
"""How OpenAPI documents every error response: RFC 9457 problem+json with a stable `code`."""


class NewestFirstPagination(CursorPagination):
    """API.md's lists: newest first, cursor-paginated, `page_size` default 50, at most 500."""

    ordering = ("-created_at", "-id")
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 500

    def decode_cursor(self, request: Request) -> Any:
        try:
            return super().decode_cursor(request)
        except NotFound:  # DRF answers a malformed cursor with 404; it is bad input
            raise ValidationError({self.cursor_query_param: ["Invalid cursor."]}) from None


def governing_policies(request: Request) -> list[Any]:
    """The policies a request answers to: its route's, and for an authenticated caller the one it adds."""
    policies = [request.policy]
    extra = getattr(request, "authenticated_policy", None)
    if extra is not None and request.user is not None and request.user.is_authenticated:
        policies.append(extra)
    return policies


def load_endpoint_policy(name: str) -> Any:
    # Indirection through a setting keeps dependencies pointing one way (jobs -> credits -> accounts).
    return import_string(settings.ENDPOINT_POLICY_LOADER)(name)


MFA_CODE_PARAMETER = OpenApiParameter(
    "X-MFA-Code",
    str,
    OpenApiParameter.HEADER,
    description="6-digit TOTP code of a confirmed device; required where the endpoint's policy requires MFA.",
)


class EndpointSchema(AutoSchema):
    """Every policy-governed operation documents the MFA header its policy may demand."""

    def get_override_parameters(self) -> list[Any]:
        return [*super().get_override_parameters(), MFA_CODE_PARAMETER]


class EndpointView(APIView):
    """An API view governed by the EndpointPolicy named `endpoint`; the policy is on `request.policy`.

    Every check (permissions, throttles) runs over governing_policies(request): the route's own policy,
    plus, for a caller who authenticated, the policy settings.AUTHENTICATED_ALSO_GOVERNED_BY names for it.
    """

    endpoint: ClassVar[str]
    schema = EndpointSchema()

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        # On the HttpRequest too: the browsable API re-checks permissions on clones that only share it.
        request.policy = request._request.policy = load_endpoint_policy(self.endpoint)
        also = import_string(settings.AUTHENTICATED_ALSO_GOVERNED_BY).get(self.endpoint)
        request.authenticated_policy = request._request.authenticated_policy = (
            load_endpoint_policy(also) if also else None
        )
        bind_context(endpoint=self.endpoint)
        super().initial(request, *args, **kwargs)

    def perform_authentication(self, request: Request) -> None:
        super().perform_authentication(request)
        if request.user is not None and request.user.is_authenticated:
            bind_context(user_id=request.user.pk)

    def get_permissions(self) -> list[Any]:
        return [permission() for permission in import_string(settings.ENDPOINT_PERMISSIONS)()]

    def get_throttles(self) -> list[Any]:
        return [throttle() for throttle in import_string(settings.ENDPOINT_THROTTLES)()]

    def finalize_response(self, request: Request, response: Response, *args: Any, **kwargs: Any) -> Response:
        response = super().finalize_response(request, response, *args, **kwargs)
        # Set by the rate-limit throttle; carried by every response, errors included.
        for name, value in getattr(request, "rate_limit_headers", {}).items():
            response[name] = value
        return response
