"""DRF authentication: `Authorization: Bearer <prefix>.<secret>` (an API key) or `Bearer <JWT>` (a short-lived
token minted from a key or an MFA-verified session, accounts.tokens), and OTP-verified sessions."""

from dataclasses import dataclass

from django_otp import user_has_device
from rest_framework.authentication import BaseAuthentication, SessionAuthentication, get_authorization_header
from rest_framework.request import Request

from accounts.models import SCOPES, ApiKey, User
from accounts.selectors import api_key_get_active
from accounts.services import API_KEY_PREFIX, api_key_touch
from accounts.tokens import TokenInvalid, token_verify
from jobsite.errors import NotAuthenticated

BEARER = b"bearer"
INVALID_BEARER = "The API key or token is not valid."
"""One answer for unknown, malformed, revoked and expired keys and tokens; the credential is never echoed."""


@dataclass(frozen=True)
class BearerToken:
    """request.auth of a call made with a JWT: the key it was minted from (None: a session) and its scopes."""

    key: ApiKey | None
    scopes: frozenset[str]


class ApiKeyAuthentication(BaseAuthentication):
    """Sets request.user to the key's owner and request.auth to the ApiKey (or a BearerToken for a JWT)."""

    def authenticate(self, request: Request) -> tuple[User, ApiKey | BearerToken] | None:
        parts = get_authorization_header(request).split()
        if not parts or parts[0].lower() != BEARER:
            return None  # not ours: the session (or nobody) may still authenticate
        try:
            raw = parts[1].decode("ascii") if len(parts) == 2 else ""
        except UnicodeDecodeError:
            raw = ""
        if raw and not raw.startswith(API_KEY_PREFIX) and raw.count(".") == 2:
            return self._token(raw)
        key = api_key_get_active(raw_key=raw) if raw else None
        if key is None:
            raise NotAuthenticated(INVALID_BEARER)
        api_key_touch(key=key)
        return key.owner, key

    def _token(self, raw: str) -> tuple[User, BearerToken]:
        try:
            grant = token_verify(raw=raw)
        except TokenInvalid:
            raise NotAuthenticated(INVALID_BEARER) from None
        return grant.user, BearerToken(key=grant.key, scopes=frozenset(grant.scopes))

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
        if user_has_device(user) and not user.is_verified():  # the session's user: request._request.user
            raise NotAuthenticated("This session has not passed its OTP check: sign in again with your TOTP code.")
        return result


AUTHENTICATION_CLASSES: tuple[type[BaseAuthentication], ...] = (ApiKeyAuthentication, OtpSessionAuthentication)
"""Who is calling, tried in order: a bearer key or token, then an OTP-verified session (settings.REST_FRAMEWORK too)."""


def request_api_key(request: Request) -> ApiKey | None:
    """The key a request came with (directly or through a token minted from it); None for sessions."""
    if isinstance(request.auth, BearerToken):
        return request.auth.key
    return request.auth if isinstance(request.auth, ApiKey) else None


def request_scopes(request: Request) -> list[str]:
    """The scopes a request carries: its key's, its token's (never more than the key has now), or all (a session)."""
    key = request_api_key(request)
    scopes = list(SCOPES) if key is None else key.scope_list
    if isinstance(request.auth, BearerToken):
        scopes = [scope for scope in scopes if scope in request.auth.scopes]
    return scopes
