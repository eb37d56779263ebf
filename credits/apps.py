from django.apps import AppConfig


class CreditsConfig(AppConfig):
    verbose_name = "Credits"
    name = "credits"

    def ready(self) -> None:
        from credits import signals  # noqa: F401 - connects the receivers
