"""Small single-purpose DRF permission classes, composed from the endpoint's policy.

Each check raises its own problem (API.md codes) rather than returning False, so the caller learns
which requirement failed. The order is fixed by policy_permission_classes().
"""

from typing import Any

from rest_framework.permissions import BasePermission
from rest_framework.request import Request

from accounts.authentication import request_api_key
from accounts.selectors import ip_allowed, user_has_mfa, user_role_names
from accounts.services import mfa_verify
from jobsite.client_ip import client_ip
from jobsite.errors import IpNotAllowed, MfaInvalid, MfaRequired, NotAuthenticated, PermissionDenied

MFA_HEADER = "X-MFA-Code"
_MFA_VERIFIED = "_jobsite_mfa_verified"
"""Marks the underlying HttpRequest once its code was accepted: re-checks (browsable API) must not replay it."""


def _authenticated(request: Request) -> bool:
    return bool(request.user and request.user.is_authenticated)


def _require_authenticated(request: Request, what: str) -> None:
    if not _authenticated(request):
        raise NotAuthenticated(f"This endpoint requires {what}; authenticate first.")


class AuthenticatedIfRequired(BasePermission):
    def has_permission(self, request: Request, view: Any) -> bool:
        if request.policy.auth_required:
            _require_authenticated(request, "authentication")
        return True


class EndpointEnabled(BasePermission):
    def has_permission(self, request: Request, view: Any) -> bool:
        if not request.policy.enabled:
            raise PermissionDenied(f"The endpoint {request.policy.name} is disabled.")
        return True


class ClientIpAllowed(BasePermission):
    """With the policy's allowlist on, the client address must match a global, user or key entry."""

    def has_permission(self, request: Request, view: Any) -> bool:
        if not request.policy.ip_allowlist:
            return True
        user = request.user if _authenticated(request) else None
        if not ip_allowed(address=client_ip(request), user=user, api_key=request_api_key(request)):
            raise IpNotAllowed("Your address is not on the allowlist for this endpoint.")
        return True


class HasPolicyRole(BasePermission):
    """Any one of the policy's roles suffices; staff are not exempt (the policy says who)."""

    def has_permission(self, request: Request, view: Any) -> bool:
        required = request.policy.role_list
        if not required:
            return True
        _require_authenticated(request, "a role")
        if not user_role_names(user=request.user) & set(required):
            raise PermissionDenied(f"This endpoint requires one of the roles: {', '.join(required)}.")
        return True


def has_scopes(request: Request, required: list[str]) -> bool:
    """A key must carry every required scope; a session carries them all."""
    key = request_api_key(request)
    return key is None or set(required) <= set(key.scope_list)


class HasPolicyScopes(BasePermission):
    def has_permission(self, request: Request, view: Any) -> bool:
        required = request.policy.scope_list
        if not required:
            return True
        _require_authenticated(request, "an API key with scopes")
        if not has_scopes(request, required):
            raise PermissionDenied(f"The API key lacks a scope this endpoint requires: {', '.join(required)}.")
        return True


def require_mfa_code(request: Request) -> None:
    """Accept the request only with a fresh code of the user's confirmed TOTP device in X-MFA-Code."""
    http_request = request._request
    if getattr(http_request, _MFA_VERIFIED, False):
        return
    _require_authenticated(request, "MFA")
    code = request.headers.get(MFA_HEADER, "").strip()
    if not code:
        detail = "Send a code of your TOTP device in the X-MFA-Code header."
        if not user_has_mfa(user=request.user):
            detail = "This endpoint requires MFA: enrol a TOTP device at /api/v1/me/mfa/totp/ first."
        raise MfaRequired(detail)
    if not mfa_verify(user=request.user, code=code):
        raise MfaInvalid("The MFA code is wrong, expired or already used.")
    setattr(http_request, _MFA_VERIFIED, True)


class MfaVerified(BasePermission):
    def has_permission(self, request: Request, view: Any) -> bool:
        if request.policy.mfa_required:
            require_mfa_code(request)
        return True


class AccountAccess(BasePermission):
    """The /me endpoints (no policy row): any valid key may read; writes need the `account:write` scope."""

    WRITE_SCOPE = "account:write"

    def has_permission(self, request: Request, view: Any) -> bool:
        _require_authenticated(request, "authentication")
        if request.method not in ("GET", "HEAD", "OPTIONS") and not has_scopes(request, [self.WRITE_SCOPE]):
            raise PermissionDenied(f"The API key lacks the scope {self.WRITE_SCOPE}.")
        return True


def policy_permission_classes() -> list[type[BasePermission]]:
    """The checks every policy-governed endpoint runs, in order: auth, enabled, IP, role, scope, MFA."""
    return [AuthenticatedIfRequired, EndpointEnabled, ClientIpAllowed, HasPolicyRole, HasPolicyScopes, MfaVerified]
