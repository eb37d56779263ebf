"""Small single-purpose DRF permission classes, composed from the endpoint's policy.

Each check raises its own problem (API.md codes) rather than returning False, so the caller learns
which requirement failed. The order is fixed by POLICY_PERMISSIONS.
"""

from rest_framework.permissions import BasePermission
from rest_framework.request import Request
from rest_framework.views import APIView

from accounts.authentication import request_api_key, request_scopes
from accounts.models import EndpointPolicy, User
from accounts.policies import governing_policies
from accounts.selectors import ip_allowed, user_has_mfa, user_role_names
from accounts.services import mfa_verify
from accounts.throttling import mfa_check_allowed, mfa_failure_record
from jobsite.client_ip import client_ip
from jobsite.errors import IpNotAllowed, MfaInvalid, MfaRequired, NotAuthenticated, PermissionDenied

MFA_HEADER = "X-MFA-Code"
_MFA_VERIFIED = "_jobsite_mfa_verified"
"""Marks the underlying HttpRequest once its code was accepted: re-checks (browsable API) must not replay it."""


def _authenticated_user(request: Request) -> User | None:
    user = request.user
    return user if isinstance(user, User) and user.is_authenticated else None


def _require_authenticated(request: Request, what: str) -> User:
    user = _authenticated_user(request)
    if user is None:
        raise NotAuthenticated(f"This endpoint requires {what}; authenticate first.")
    return user


class PolicyPermission(BasePermission):
    """One requirement, checked against every policy that governs the request (accounts.policies.governing_policies)."""

    def has_permission(self, request: Request, view: APIView) -> bool:
        for policy in governing_policies(request):
            self.check(request, view, policy)
        return True

    def check(self, request: Request, view: APIView, policy: EndpointPolicy) -> None:
        raise NotImplementedError


class AuthenticatedIfRequired(PolicyPermission):
    """`auth_required=false` is the policy's anonymous-access switch (off by default, see accounts.policies)."""

    def check(self, request: Request, view: APIView, policy: EndpointPolicy) -> None:
        if policy.auth_required:
            _require_authenticated(request, "authentication")


class EndpointEnabled(PolicyPermission):
    def check(self, request: Request, view: APIView, policy: EndpointPolicy) -> None:
        if not policy.enabled:
            raise PermissionDenied(f"The endpoint {policy.name} is disabled.")


class ClientIpAllowed(PolicyPermission):
    """With the policy's allowlist on, the client address must match a global, user or key entry."""

    def check(self, request: Request, view: APIView, policy: EndpointPolicy) -> None:
        if not policy.ip_allowlist:
            return
        if not ip_allowed(
            address=client_ip(request), user=_authenticated_user(request), api_key=request_api_key(request)
        ):
            raise IpNotAllowed("Your address is not on the allowlist for this endpoint.")


class HasPolicyRole(PolicyPermission):
    """Any one of the policy's roles suffices; staff are not exempt (the policy says who)."""

    def check(self, request: Request, view: APIView, policy: EndpointPolicy) -> None:
        required = policy.role_list
        if not required:
            return
        user = _require_authenticated(request, "a role")
        if not user_role_names(user=user) & set(required):
            raise PermissionDenied(f"This endpoint requires one of the roles: {', '.join(required)}.")


def has_scopes(request: Request, required: list[str]) -> bool:
    """A key (or a token) must carry every required scope; a session carries them all."""
    return set(required) <= set(request_scopes(request))


class HasPolicyScopes(PolicyPermission):
    def check(self, request: Request, view: APIView, policy: EndpointPolicy) -> None:
        required = policy.scope_list
        if not required:
            return
        _require_authenticated(request, "an API key with scopes")
        if not has_scopes(request, required):
            raise PermissionDenied(f"The API key lacks a scope this endpoint requires: {', '.join(required)}.")


def _mfa_credential(request: Request) -> str:
    """What a wrong code is counted against: the key, or the session's user."""
    key = request_api_key(request)
    return f"key:{key.prefix}" if key is not None else f"user:{request.user.pk}"


def require_mfa_code(request: Request) -> None:
    """Accept the request only with a fresh code of the user's confirmed TOTP device in X-MFA-Code.

    Wrong codes are throttled per (credential, client IP) and per IP (accounts.throttling), never on the device.
    """
    http_request = request._request
    if getattr(http_request, _MFA_VERIFIED, False):
        return
    user = _require_authenticated(request, "MFA")
    code = request.headers.get(MFA_HEADER, "").strip()
    if not code:
        detail = "Send a code of your TOTP device in the X-MFA-Code header."
        if not user_has_mfa(user=user):
            detail = "This endpoint requires MFA: enrol a TOTP device at /api/v1/me/mfa/totp/ first."
        raise MfaRequired(detail)
    credential = _mfa_credential(request)
    mfa_check_allowed(http_request, credential=credential)
    if not mfa_verify(user=user, code=code):
        mfa_failure_record(http_request, credential=credential)
        raise MfaInvalid("The MFA code is wrong, expired or already used.")
    setattr(http_request, _MFA_VERIFIED, True)


class MfaVerified(PolicyPermission):
    """Views that enrol the first device (`mfa_enrolment`) let a user without one through: they cannot comply."""

    def check(self, request: Request, view: APIView, policy: EndpointPolicy) -> None:
        if not policy.mfa_required:
            return
        user = _authenticated_user(request)
        if getattr(view, "mfa_enrolment", False) and not (user is not None and user_has_mfa(user=user)):
            return
        require_mfa_code(request)


POLICY_PERMISSIONS: tuple[type[BasePermission], ...] = (
    AuthenticatedIfRequired,
    EndpointEnabled,
    ClientIpAllowed,
    HasPolicyRole,
    HasPolicyScopes,
    MfaVerified,
)
"""The checks every policy-governed endpoint runs, in order: auth, enabled, IP, role, scope, MFA."""
