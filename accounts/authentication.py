"""DRF authentication by `Authorization: Bearer <prefix>.<secret>`."""

from typing import Any

from django_otp import user_has_device
from rest_framework.authentication import BaseAuthentication, SessionAuthentication, get_authorization_header
from rest_framework.request import Request

from accounts.models import ApiKey, User
from accounts.selectors import api_key_get_active
from accounts.services import api_key_touch
from jobsite.errors import NotAuthenticated

BEARER = b"bearer"


class ApiKeyAuthentication(BaseAuthentication):
    """Sets request.user to the key's owner and request.auth to the ApiKey."""

    def authenticate(self, request: Request) -> tuple[User, ApiKey] | None:
        parts = get_authorization_header(request).split()
        if not parts or parts[0].lower() != BEARER:
            return None  # not ours: the session (or nobody) may still authenticate
        try:
            raw_key = parts[1].decode("ascii") if len(parts) == 2 else ""
        except UnicodeDecodeError:
            raw_key = ""
        key = api_key_get_active(raw_key=raw_key) if raw_key else None
        if key is None:
            # One answer for unknown, malformed, revoked and expired keys; the key itself is never echoed.
            raise NotAuthenticated("The API key is not valid.")
        api_key_touch(key=key)
        return key.owner, key

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="api"'


class OtpSessionAuthentication(SessionAuthentication):
    """A session counts only once OTP-verified when its user has a device: the admin's rule, for the API too.

    Without it a password-only session (DRF's login, or a half-finished admin login) would carry every scope
    and, for staff, everyone's jobs."""

    def authenticate(self, request: Request) -> tuple[User, None] | None:
        result = super().authenticate(request)
        if result is None:
            return None
        user = result[0]
        if user_has_device(user) and not request._request.user.is_verified():
            raise NotAuthenticated("This session has not passed its OTP check: sign in again with your TOTP code.")
        return result


def request_api_key(request: Any) -> ApiKey | None:
    """The key a request came with; None for sessions (which carry every scope) and anonymous callers."""
    return request.auth if isinstance(request.auth, ApiKey) else None
