from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from jobs import compat
from jobs.health import healthz

urlpatterns = [
    path("api/v1/", include("jobs.urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="swagger-ui"),
    path("healthz", healthz, name="healthz"),
    path("sync", compat.CompatSyncView.as_view(), name="compat-sync"),
    path("async", compat.CompatAsyncView.as_view(), name="compat-async"),
    path("requests", compat.CompatRequestListView.as_view(), name="compat-requests"),
    path("requests/<str:request_id>", compat.CompatRequestDetailView.as_view(), name="compat-request"),
    path("admin/rq/", include("django_rq.urls")),
    path("admin/", admin.site.urls),
    path("", include("django_prometheus.urls")),
]

handler404 = "jobsite.errors.handler404"
handler500 = "jobsite.errors.handler500"
