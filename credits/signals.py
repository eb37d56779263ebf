"""Every user gets a credit account when created (the charge on the hot path is one UPDATE of an existing
row), and new users start with NEW_USER_CREDITS, granted once (the posting key is per user)."""

from typing import Any

from django.conf import settings
from django.db.models.signals import post_save
from django.dispatch import receiver

from accounts.models import User
from credits.models import CreditAccount
from credits.services import credit_grant


@receiver(post_save, sender=User)
def _open_credit_account(sender: type, instance: User, created: bool, raw: bool = False, **kwargs: Any) -> None:
    if not created or raw:
        return
    CreditAccount.objects.create(user=instance)
    if settings.NEW_USER_CREDITS > 0:
        credit_grant(
            user=instance,
            amount=settings.NEW_USER_CREDITS,
            reason="new user credits",
            posting_key=f"welcome:{instance.pk}",
        )
