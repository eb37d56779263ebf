"""Database router: keeps models that have no table out of `dumpdata` and `loaddata`."""

from typing import Any

TABLELESS_MODELS = frozenset({("django_rq", "dashboard")})
"""(app label, model name) of unmanaged models with no table: django-rq's admin-only dashboard entry."""


class TablelessModelsRouter:
    """`dumpdata` serializes every model the router lets migrate, unmanaged ones included; these have no table."""

    def allow_migrate(self, db: str, app_label: str, model_name: str | None = None, **hints: Any) -> bool | None:
        return False if (app_label, model_name) in TABLELESS_MODELS else None
