"""The base of every policy-governed API view (it loads the endpoint's policy before DRF's checks), the JSON
parser, pagination, and the OpenAPI pieces every operation shares (problem responses, security)."""

from typing import Any, ClassVar

from django.conf import settings
from django.utils.dateparse import parse_datetime
from django.utils.module_loading import import_string
from drf_spectacular.openapi import AutoSchema
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, PolymorphicProxySerializer, inline_serializer
from rest_framework import exceptions, serializers
from rest_framework.pagination import Cursor, CursorPagination
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from jobsite.errors import PROBLEM_CONTENT_TYPE, NotFound
from jobsite.logs import bind_context


class ProblemFieldErrorSerializer(serializers.Serializer):
    field = serializers.CharField(help_text="Dotted path of the field (`body` for the whole body).")
    message = serializers.CharField()


class ProblemSerializer(serializers.Serializer):
    """RFC 9457 problem details; `code` is stable. Some codes add members (`balance`, `cost`, `retry_after`...)."""

    type = serializers.CharField(help_text="urn:jobsite:problem:<code>")
    title = serializers.CharField()
    status = serializers.IntegerField()
    detail = serializers.CharField()
    code = serializers.CharField()
    errors = ProblemFieldErrorSerializer(many=True, required=False, help_text="validation_error: each bad field.")


PROBLEM = OpenApiResponse(response=ProblemSerializer, description="problem+json (see `code`)")
"""How OpenAPI documents every error response: RFC 9457 problem+json with a stable `code`."""

GATE_STATUSES = (400, 401, 403, 406, 429, 503)
"""What any policy-governed operation can answer before its own work: bad query or body, authentication,
permission (scope, role, IP, disabled), an unacceptable Accept, rate limit, a backing service down."""

BODY_STATUSES = (413, 415)
"""What an operation that reads a body can also answer: too large, not JSON."""


def problems(*statuses: int) -> dict[tuple[int, str], OpenApiResponse]:
    """OpenAPI responses for the given error statuses, each a problem+json body."""
    return {(status, PROBLEM_CONTENT_TYPE): PROBLEM for status in sorted(set(statuses))}


CURSOR_PATTERN = r"^[A-Za-z0-9_-]{1,512}={0,2}$"
"""A cursor is an opaque token copied from `next` or `previous` (urlsafe base64)."""


class PageQuerySerializer(serializers.Serializer):
    """The query of a cursor-paginated list; validated before the paginator reads it."""

    page_size = serializers.IntegerField(min_value=1, required=False, help_text="Default 50; above 500 means 500.")
    cursor = serializers.RegexField(CURSOR_PATTERN, required=False, help_text="`next` or `previous` of a page.")


def paginated(name: str, item: serializers.Serializer) -> serializers.Serializer:
    """The envelope of a cursor-paginated list, as NewestFirstPagination answers it."""
    return inline_serializer(
        name=name,
        fields={
            "next": serializers.URLField(allow_null=True, help_text="The next page, or null."),
            "previous": serializers.URLField(allow_null=True, help_text="The previous page, or null."),
            "results": item,
        },
    )


class NewestFirstPagination(CursorPagination):
    """API.md's lists: newest first, cursor-paginated, `page_size` default 50, at most 500."""

    ordering = ("-created_at", "-id")
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 500

    def paginate_queryset(self, queryset: Any, request: Request, view: Any = None) -> Any:
        PageQuerySerializer(data=request.query_params.dict()).is_valid(raise_exception=True)
        return super().paginate_queryset(queryset, request, view)

    def decode_cursor(self, request: Request) -> Cursor | None:
        # A cursor names a page; one this service did not issue names no page (404, as DRF decides).
        try:
            cursor = super().decode_cursor(request)
            if cursor is not None and cursor.position is not None and parse_datetime(cursor.position) is None:
                raise ValueError(cursor.position)
        except (exceptions.NotFound, ValueError):
            raise NotFound("No such page: the cursor is not one this service issued.") from None
        return cursor


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


class ApiSchema(AutoSchema):
    """Descriptions come from `extend_schema` only: a class's docstring is for developers, not integrators."""

    def get_description(self) -> str:
        return ""

    def _get_request_for_media_type(self, serializer: Any, direction: str = "request") -> tuple[Any, bool]:
        schema, required = super()._get_request_for_media_type(serializer, direction)
        # drf-spectacular cannot see into a union; every variant requires `kind`, so the body is required.
        return schema, required or isinstance(serializer, PolymorphicProxySerializer)


class EndpointSchema(ApiSchema):
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
