from django.apps import AppConfig
from django.contrib.admin import apps as admin_apps


class AccountsConfig(AppConfig):
    name = "accounts"
    verbose_name = "Accounts and access"
    default = True

    def ready(self) -> None:
        from accounts import credentials, policies, schema  # noqa: F401 - change signals; the OpenAPI extension


class JobsiteAdminConfig(admin_apps.AdminConfig):
    """django.contrib.admin with our OTP-aware site as `admin.site`, so every register() lands there."""

    default = False
    default_site = "accounts.admin_site.JobsiteAdminSite"
