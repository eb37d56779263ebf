"""Small single-purpose DRF permission classes, composed from the endpoint's policy."""

from typing import Any

from rest_framework.permissions import BasePermission
from rest_framework.request import Request

from jobsite.errors import NotAuthenticated, PermissionDenied


class EndpointEnabled(BasePermission):
    def has_permission(self, request: Request, view: Any) -> bool:
        if not request.policy.enabled:
            raise PermissionDenied(f"The endpoint {request.policy.name} is disabled.")
        return True


class AuthenticatedIfRequired(BasePermission):
    def has_permission(self, request: Request, view: Any) -> bool:
        if request.policy.auth_required and not (request.user and request.user.is_authenticated):
            raise NotAuthenticated("Authentication credentials were not provided or are invalid.")
        return True


def policy_permission_classes() -> list[type[BasePermission]]:
    """The checks every policy-governed endpoint runs, in order."""
    return [AuthenticatedIfRequired, EndpointEnabled]
