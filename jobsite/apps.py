from django.apps import AppConfig
from django.conf import settings
from django_otp.plugins.otp_totp.apps import DefaultConfig as OtpTotpConfig
from django_rq.apps import DjangoRqAdminConfig


class JobsiteConfig(AppConfig):
    name = "jobsite"

    def ready(self) -> None:
        from jobsite.logs import configure_structlog
        from jobsite.tracing import configure_tracing

        configure_structlog()
        configure_tracing(settings.OTEL_EXPORTER)


class RqConfig(DjangoRqAdminConfig):
    """django-rq under a name staff read in the admin's app list (not DJANGO_RQ)."""

    verbose_name = "Queues (RQ dashboard)"


class OtpTotpAdminConfig(OtpTotpConfig):
    """django-otp's TOTP devices under a name staff read in the admin's app list (not OTP_TOTP)."""

    verbose_name = "Two-factor devices (TOTP)"
