import threading
from typing import Any, ClassVar

from django.contrib import admin
from django.urls import URLPattern, include, path
from django_rq.urls import get_admin_urlpatterns, get_api_urlpatterns
from drf_spectacular.generators import SchemaGenerator
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView

from jobs import compat
from jobs.health import healthz
from jobs.metrics_view import MetricsView
from jobs.operations import operations_view


def rq_dashboard_urlpatterns() -> list[URLPattern]:
    api = [
        URLPattern(p.pattern, admin.site.admin_view(p.callback), p.default_args, p.name) for p in get_api_urlpatterns()
    ]
    return api + get_admin_urlpatterns(view_wrapper=admin.site.admin_view)


class OncePerProcessSchemaGenerator(SchemaGenerator):
    """Generates the document once per process, under a lock: it changes only with the code, and drf-spectacular's
    generation is not thread-safe (class-level extension registry and counters: two cold requests at once got a 500)."""

    _lock: ClassVar = threading.Lock()
    _documents: ClassVar[dict[tuple[str | None, bool], dict[str, Any]]] = {}

    def get_schema(self, request: Any = None, public: bool = False) -> dict[str, Any]:
        key = (self.api_version, public)
        with self._lock:
            if key not in self._documents:
                self._documents[key] = super().get_schema(request=request, public=public)
            return self._documents[key]


class SchemaView(SpectacularAPIView):
    """The OpenAPI document: YAML, or JSON for `?format=json` (URL_FORMAT_OVERRIDE is off: `format` is the export's)."""

    generator_class = OncePerProcessSchemaGenerator

    def get_format_suffix(self, **kwargs: Any) -> str | None:
        return self.request.query_params.get("format") or None


urlpatterns = [
    path("api/v1/", include("jobs.urls")),
    path("api/v1/", include("accounts.urls")),
    # Session sign-in for the browsable API and Swagger UI: the admin's rule (password + OTP if enrolled), throttled.
    path("api-auth/", include("accounts.auth_urls")),
    path("api/v1/", include("credits.urls")),
    path("api/schema/", SchemaView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="swagger-ui"),
    path("api/redoc/", SpectacularRedocView.as_view(url_name="schema"), name="redoc"),
    path("healthz", healthz, name="healthz"),
    path("sync", compat.CompatSyncView.as_view(), name="compat-sync"),
    path("async", compat.CompatAsyncView.as_view(), name="compat-async"),
    path("requests", compat.CompatRequestListView.as_view(), name="compat-requests"),
    path("requests/<str:request_id>", compat.CompatRequestDetailView.as_view(), name="compat-request"),
    # The RQ dashboard and its JSON/metrics behind the admin site's own check (staff, plus OTP for staff with a
    # device); django-rq's API views alone admit any staff session, OTP or not.
    path("admin/rq/", include((rq_dashboard_urlpatterns(), "django_rq"))),
    path("admin/operations/", admin.site.admin_view(operations_view), name="admin-operations"),
    path("admin/", admin.site.urls),
    path("metrics", MetricsView.as_view(), name="metrics"),
]

handler400 = "jobsite.errors.handler400"
handler403 = "jobsite.errors.handler403"
handler404 = "jobsite.errors.handler404"
handler500 = "jobsite.errors.handler500"
