"""Third-party apps under names staff read in the admin's app list (not DJANGO_RQ or OTP_TOTP).

Kept out of jobsite/apps.py: Django picks an app's config automatically only when its apps module holds one.
"""

from django_otp.plugins.otp_totp.apps import DefaultConfig as OtpTotpConfig
from django_rq.apps import DjangoRqAdminConfig


class RqConfig(DjangoRqAdminConfig):
    verbose_name = "Queues (RQ dashboard)"


class OtpTotpAdminConfig(OtpTotpConfig):
    verbose_name = "Two-factor devices (TOTP)"
