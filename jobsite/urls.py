from typing import Any

from django.contrib import admin
from django.urls import include, path
from django_rq.urls import get_admin_urlpatterns, get_api_urlpatterns
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from jobs import compat
from jobs.health import healthz
from jobs.metrics import metrics_view


class SchemaView(SpectacularAPIView):
    """The OpenAPI document: YAML, or JSON for `?format=json` (URL_FORMAT_OVERRIDE is off: `format` is the export's)."""

    def get_format_suffix(self, **kwargs: Any) -> str | None:
        return self.request.query_params.get("format") or None


urlpatterns = [
    path("api/v1/", include("jobs.urls")),
    path("api/v1/", include("accounts.urls")),
    # DRF's session login/logout for the browsable API and Swagger UI.
    path("api-auth/", include("rest_framework.urls")),
    path("api/v1/", include("credits.urls")),
    path("api/schema/", SchemaView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="swagger-ui"),
    path("healthz", healthz, name="healthz"),
    path("sync", compat.CompatSyncView.as_view(), name="compat-sync"),
    path("async", compat.CompatAsyncView.as_view(), name="compat-async"),
    path("requests", compat.CompatRequestListView.as_view(), name="compat-requests"),
    path("requests/<str:request_id>", compat.CompatRequestDetailView.as_view(), name="compat-request"),
    # The RQ dashboard behind the admin site's own check (staff, plus OTP for staff with a device).
    path(
        "admin/rq/",
        include((get_api_urlpatterns() + get_admin_urlpatterns(view_wrapper=admin.site.admin_view), "django_rq")),
    ),
    path("admin/", admin.site.urls),
    path("metrics", metrics_view, name="metrics"),
]

handler400 = "jobsite.errors.handler400"
handler403 = "jobsite.errors.handler403"
handler404 = "jobsite.errors.handler404"
handler500 = "jobsite.errors.handler500"
