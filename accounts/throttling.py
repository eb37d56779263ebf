"""Throttles on guessing secrets (passwords at sign-in, TOTP codes in X-MFA-Code), with django-ratelimit.

Sign-in: every POST counts per account (the submitted username) and per client IP.
MFA codes on API calls: only failures count, per (credential, client IP) and per client IP; the device's own
failure counter is not used (accounts.models.ApiTotpDevice), so an attacker's wrong codes slow the attacker,
never the owner on another address.
"""

from typing import Any

from django.conf import settings
from django.http import HttpRequest
from django_ratelimit.core import get_usage, is_ratelimited

from jobsite.client_ip import client_ip
from jobsite.errors import RateLimited

LOGIN_GROUP = "jobsite.login"
MFA_GROUP = "jobsite.mfa"


def _login_rate(group: str, request: HttpRequest) -> str:
    return settings.LOGIN_RATE


def _mfa_rate(group: str, request: HttpRequest) -> str:
    return settings.MFA_FAILURE_RATE


def _mfa_ip_rate(group: str, request: HttpRequest) -> str:
    return settings.MFA_FAILURE_RATE_PER_IP


def _login_account(group: str, request: HttpRequest) -> str:
    return "account:" + request.POST.get("username", "").strip().lower()


def _login_ip(group: str, request: HttpRequest) -> str:
    return "ip:" + client_ip(request)


def login_throttled(request: HttpRequest) -> bool:
    """Count a sign-in POST; True when its account or its address has tried too often."""
    by_account = is_ratelimited(request, group=LOGIN_GROUP, key=_login_account, rate=_login_rate, increment=True)
    by_ip = is_ratelimited(request, group=LOGIN_GROUP, key=_login_ip, rate=_login_rate, increment=True)
    return by_account or by_ip


def _mfa_limits(credential: str) -> list[dict[str, Any]]:
    return [
        {"group": MFA_GROUP, "key": lambda group, request: f"{credential}@{client_ip(request)}", "rate": _mfa_rate},
        {"group": MFA_GROUP, "key": lambda group, request: f"ip:{client_ip(request)}", "rate": _mfa_ip_rate},
    ]


def mfa_check_allowed(request: HttpRequest, *, credential: str) -> None:
    """Raise 429 while the credential (key prefix or session user) at this address has failed too often."""
    for limit in _mfa_limits(credential):
        usage = get_usage(request, **limit, increment=False)
        if usage is not None and usage["count"] >= usage["limit"]:
            wait = max(1, usage["time_left"])
            raise RateLimited(
                f"Too many wrong MFA codes from this address; retry in {wait} s.",
                headers={"Retry-After": str(wait)},
                retry_after=wait,
            )


def mfa_failure_record(request: HttpRequest, *, credential: str) -> None:
    for limit in _mfa_limits(credential):
        get_usage(request, **limit, increment=True)
