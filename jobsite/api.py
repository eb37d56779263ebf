"""What every API view shares: problem responses, cursor pagination, and the OpenAPI pieces of every operation."""

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from django.db.models import Model, QuerySet
from django.utils.dateparse import parse_datetime
from drf_spectacular.openapi import AutoSchema
from drf_spectacular.utils import OpenApiResponse, PolymorphicProxySerializer, inline_serializer
from rest_framework import exceptions, serializers
from rest_framework.pagination import Cursor, CursorPagination
from rest_framework.request import Request

from jobsite.errors import PROBLEM_CONTENT_TYPE, NotFound

if TYPE_CHECKING:  # rest_framework.views loads the authentication classes, which import this module
    from rest_framework.views import APIView

M = TypeVar("M", bound=Model)
R = TypeVar("R")


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
    errors = ProblemFieldErrorSerializer(  # type: ignore[assignment]  # a field: DRF's metaclass leaves the property
        many=True, required=False, help_text="validation_error: each bad field."
    )


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

    def paginate_queryset(
        self, queryset: QuerySet[M, R] | Sequence[R], request: Request, view: "APIView | None" = None
    ) -> list[R] | None:
        PageQuerySerializer(data=request.query_params.dict()).is_valid(raise_exception=True)
        return super().paginate_queryset(queryset, request, view)

    def decode_cursor(self, request: Request) -> Cursor | None:
        # A cursor names a page; one this service did not issue names no page (404, as DRF decides).
        try:
            cursor = super().decode_cursor(request)
            if cursor is not None and cursor.position is not None and not self.position_valid(str(cursor.position)):
                raise ValueError(cursor.position)
        except (exceptions.NotFound, ValueError):
            raise NotFound("No such page: the cursor is not one this service issued.") from None
        return cursor

    def position_valid(self, position: str) -> bool:
        """Whether a decoded cursor's position is a value of the ordering's first field (here: an instant)."""
        return parse_datetime(position) is not None


class ApiSchema(AutoSchema):
    """Descriptions come from `extend_schema` only: a class's docstring is for developers, not integrators."""

    def get_description(self) -> str:  # type: ignore[override]  # spectacular's signature, not DRF's it shadows
        return ""

    def _map_serializer(self, serializer: Any, direction: str, bypass_extensions: bool = False) -> dict[str, Any]:
        schema: dict[str, Any] = super()._map_serializer(serializer, direction, bypass_extensions)
        # JSON Schema's dependentRequired, which DRF cannot state: a member that needs another (OpenAPI 3.1).
        dependent = getattr(serializer, "dependent_required", None)
        if dependent:
            schema["dependentRequired"] = dependent
        # Exactly one of alternative members (inline data or an upload_id), which DRF cannot state either.
        alternatives = getattr(serializer, "one_of_required", None)
        if alternatives:
            schema["oneOf"] = [{"required": members} for members in alternatives]
        return schema

    def _get_request_for_media_type(self, serializer: Any, direction: str = "request") -> tuple[Any, bool]:
        schema, required = super()._get_request_for_media_type(serializer, direction)
        # drf-spectacular cannot see into a union; every variant requires `kind`, so the body is required.
        return schema, required or isinstance(serializer, PolymorphicProxySerializer)
