"""Kind settings: defaults from each kind's module, the database row wins; cached like endpoint policies
(jobsite.process_cache), so an edit is seen everywhere without a restart."""

from datetime import datetime, timedelta
from typing import Any

from django.db import transaction
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver

from jobs.kinds import KINDS
from jobs.models import KindSettings
from jobsite.process_cache import settings_cache


def kind_defaults(kind_name: str) -> dict[str, Any]:
    kind = KINDS[kind_name]
    return {
        "cost": kind.cost,
        # On by default only where one entry serves every user; a per-owner cache is the staff's choice.
        "cache_algorithm": "lru" if kind.cacheable and kind.public_results else "none",
        "time_limit": kind.time_limit,
        "retries": kind.retries,
        "encrypt_fields": ",".join(kind.sensitive_fields),
        "circuit_threshold": 5 if kind.circuit_target else 0,
    }


def get_kind_settings(kind_name: str) -> KindSettings:
    """The settings for a kind; an unsaved row built from the kind's defaults if none is stored."""

    def load() -> KindSettings:
        row = KindSettings.objects.filter(kind=kind_name).first()
        return row or KindSettings(kind=kind_name, **kind_defaults(kind_name))

    return settings_cache.get((KindSettings, kind_name), load)


def job_expiry(kind_name: str, finished_at: datetime) -> datetime:
    """When a job of this kind that became final at `finished_at` expires (its kind's retention later)."""
    return finished_at + timedelta(days=get_kind_settings(kind_name).retention)


@receiver([post_save, post_delete], sender=KindSettings)
def _on_kind_settings_change(**kwargs: Any) -> None:
    # After commit: a version bumped earlier could let another process cache the old row under the new version.
    settings_cache.clear()
    transaction.on_commit(settings_cache.changed)
