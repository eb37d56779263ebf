"""Short-lived JWT bearer tokens (djangorestframework-simplejwt access tokens, HS256 with SECRET_KEY).

A token is minted from an API key (it carries the key's prefix and scopes, and dies with the key: every use
re-checks that the key is still live, and its scopes can only narrow) or from an MFA-verified session (every
scope, no key: it lives JWT_ACCESS_LIFETIME at most). A token never mints another token.
"""

from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.utils import timezone
from rest_framework_simplejwt.exceptions import TokenError
from rest_framework_simplejwt.tokens import AccessToken

from accounts.models import ApiKey, User

KEY_CLAIM = "key"
"""The prefix of the API key a token was minted from (absent: minted from a session)."""
SCOPES_CLAIM = "scopes"


class TokenInvalid(Exception):
    """Malformed, forged, expired, or its key or user is no longer live."""


@dataclass(frozen=True)
class TokenGrant:
    user: User
    key: ApiKey | None
    scopes: list[str]


def token_mint(*, user: User, key: ApiKey | None, scopes: list[str]) -> tuple[str, int]:
    """A signed access token and its lifetime in seconds."""
    lifetime = settings.JWT_ACCESS_LIFETIME
    token = AccessToken.for_user(user)
    token.set_exp(lifetime=timedelta(seconds=lifetime))
    token[SCOPES_CLAIM] = scopes
    if key is not None:
        token[KEY_CLAIM] = key.prefix
    return str(token), lifetime


def token_verify(*, raw: str) -> TokenGrant:
    """The grant a presented token stands for, if it, its user and its key are all still valid."""
    try:
        token = AccessToken(raw)  # type: ignore[arg-type]  # simplejwt annotates the encoded str as Token
    except TokenError:
        raise TokenInvalid from None
    user = User.objects.filter(pk=token.get("user_id"), is_active=True).first()
    if user is None:
        raise TokenInvalid
    key = None
    if token.get(KEY_CLAIM):
        key = ApiKey.objects.filter(prefix=token[KEY_CLAIM], owner=user, revoked_at__isnull=True).first()
        if key is None or (key.expires_at is not None and key.expires_at <= timezone.now()):
            raise TokenInvalid
    scopes = token.get(SCOPES_CLAIM)
    if not isinstance(scopes, list):
        raise TokenInvalid
    return TokenGrant(user=user, key=key, scopes=[str(scope) for scope in scopes])
