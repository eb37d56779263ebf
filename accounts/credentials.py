"""Invalidation of credentials_cache (jobsite.process_cache): any change to what authenticates or authorises a
caller drops this process's copies at once and every other process's within POLICY_CHECK_INTERVAL.

Writes that bypass signals (QuerySet.update) call credentials_changed() themselves (accounts.services).
"""

from typing import Any

from django.db import transaction
from django.db.models.signals import m2m_changed, post_delete, post_save, pre_save
from django.dispatch import receiver
from django_otp.plugins.otp_totp.models import TOTPDevice

from accounts.models import ApiKey, ApiTotpDevice, IpAllowEntry, Role, User
from jobsite.process_cache import credentials_cache

LOGIN_ONLY = frozenset({"last_login"})
"""A User save that writes only these fields (each sign-in) changes nothing the gate reads."""


def credentials_changed() -> None:
    """Drop cached credentials here now and, once the change commits, in every process."""
    credentials_cache.clear()
    # After commit: a version bumped earlier could let another process cache the old row under the new version.
    transaction.on_commit(credentials_cache.changed)


@receiver([post_save, post_delete], sender=ApiKey)
@receiver([post_save, post_delete], sender=IpAllowEntry)
@receiver([post_save, post_delete], sender=Role)
@receiver(post_delete, sender=TOTPDevice)
@receiver(post_delete, sender=ApiTotpDevice)
@receiver(m2m_changed, sender=User.roles.through)
def _on_credentials_change(**kwargs: Any) -> None:
    credentials_changed()


@receiver([post_save, post_delete], sender=User)
def _on_user_change(update_fields: frozenset[str] | None = None, **kwargs: Any) -> None:
    if update_fields is None or not update_fields <= LOGIN_ONLY:
        credentials_changed()


_CONFIRMED_BEFORE = "_jobsite_confirmed_before"
"""Set on a TOTP device being saved: its stored `confirmed` (None: a new device)."""


@receiver(pre_save, sender=TOTPDevice)
@receiver(pre_save, sender=ApiTotpDevice)
def _before_device_save(instance: TOTPDevice, **kwargs: Any) -> None:
    stored = type(instance).objects.filter(pk=instance.pk).values_list("confirmed", flat=True).first()
    setattr(instance, _CONFIRMED_BEFORE, stored)


@receiver(post_save, sender=TOTPDevice)
@receiver(post_save, sender=ApiTotpDevice)
def _on_device_save(instance: TOTPDevice, **kwargs: Any) -> None:
    # Every accepted code saves the device (its last step): only enrolment itself changes what the gate reads.
    if getattr(instance, _CONFIRMED_BEFORE, None) != instance.confirmed:
        credentials_changed()
