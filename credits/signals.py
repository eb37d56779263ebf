"""New users start with NEW_USER_CREDITS, granted once (the posting key is per user)."""

from typing import Any

from django.conf import settings
from django.db.models.signals import post_save
from django.dispatch import receiver

from accounts.models import User
from credits.services import credit_grant


@receiver(post_save, sender=User)
def _grant_new_user_credits(sender: type, instance: User, created: bool, raw: bool = False, **kwargs: Any) -> None:
    if created and not raw and settings.NEW_USER_CREDITS > 0:
        credit_grant(
            user=instance,
            amount=settings.NEW_USER_CREDITS,
            reason="new user credits",
            posting_key=f"welcome:{instance.pk}",
        )
