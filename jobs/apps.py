from django.apps import AppConfig


class JobsConfig(AppConfig):
    verbose_name = "Jobs and kind settings"
    name = "jobs"

    def ready(self) -> None:
        from jobs import kind_settings  # noqa: F401 - kind settings change signals
