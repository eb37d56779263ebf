from django.apps import AppConfig
from django.conf import settings


class JobsiteConfig(AppConfig):
    name = "jobsite"

    def ready(self) -> None:
        from jobsite import after_response  # noqa: F401 - its request_finished receiver
        from jobsite.logs import configure_structlog
        from jobsite.tracing import configure_tracing

        configure_structlog()
        configure_tracing(settings.OTEL_EXPORTER)
