"""The base of every policy-governed API view: it loads the endpoint's policies before DRF's checks run them."""

from collections.abc import Sequence
from typing import Any, ClassVar, cast

from drf_spectacular.utils import OpenApiParameter
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.authentication import AUTHENTICATION_CLASSES
from accounts.endpoints import AUTHENTICATED_ALSO_GOVERNED_BY, Endpoint
from accounts.permissions import POLICY_PERMISSIONS
from accounts.policies import get_endpoint_policy
from accounts.requests import PolicyRequest
from accounts.throttles import POLICY_THROTTLES, LimiterThrottle, rate_limits_check
from jobsite.api import ApiSchema
from jobsite.logs import bind_context

MFA_CODE_PARAMETER = OpenApiParameter(
    "X-MFA-Code",
    str,
    OpenApiParameter.HEADER,
    description="6-digit TOTP code of a confirmed device; required where the endpoint's policy requires MFA.",
)


class EndpointSchema(ApiSchema):
    """Every policy-governed operation documents the MFA header its policy may demand."""

    def get_override_parameters(self) -> list[Any]:
        return [*super().get_override_parameters(), MFA_CODE_PARAMETER]


class EndpointView(APIView):
    """An API view governed by the EndpointPolicy named `endpoint`; the policy is on `request.policy`.

    The gate, in the order it runs: who is calling (authentication_classes), may they (permission_classes),
    how often (throttle_classes, all their limiters in one Redis round trip). Every check runs over
    governing_policies(request): the route's own policy, plus, for a caller who authenticated, the policy
    AUTHENTICATED_ALSO_GOVERNED_BY names for it.
    """

    endpoint: ClassVar[Endpoint]
    method_endpoints: ClassVar[dict[str, Endpoint]] = {}
    """Methods governed by another policy than `endpoint` (a collection read under jobs.read, added to under another)."""
    authentication_classes = AUTHENTICATION_CLASSES
    permission_classes = POLICY_PERMISSIONS
    throttle_classes: Sequence[type[LimiterThrottle]] = POLICY_THROTTLES
    schema = EndpointSchema()

    @classmethod
    def endpoint_for(cls, method: str) -> Endpoint:
        """The endpoint whose policy governs a call with this HTTP method."""
        return cls.method_endpoints.get(method.upper(), cls.endpoint)

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        gated = cast(PolicyRequest, request)
        endpoint = self.endpoint_for(request.method or "GET")
        also = AUTHENTICATED_ALSO_GOVERNED_BY.get(endpoint)
        gated.policy = get_endpoint_policy(endpoint)
        gated.authenticated_policy = get_endpoint_policy(also) if also else None
        # On the HttpRequest too: the browsable API re-checks permissions on clones that only share it.
        request._request.__dict__.update(policy=gated.policy, authenticated_policy=gated.authenticated_policy)
        bind_context(endpoint=endpoint)
        super().initial(request, *args, **kwargs)

    def perform_authentication(self, request: Request) -> None:
        super().perform_authentication(request)
        if request.user is not None and request.user.is_authenticated:
            bind_context(user_id=request.user.pk)

    def check_throttles(self, request: Request) -> None:
        # DRF's get_throttles, typed: rate_limits_check needs LimiterThrottles.
        rate_limits_check(request, self, [throttle() for throttle in self.throttle_classes])

    def finalize_response(self, request: Request, response: Response, *args: Any, **kwargs: Any) -> Response:
        response = super().finalize_response(request, response, *args, **kwargs)
        # Set by the rate-limit throttle; carried by every response, errors included.
        for name, value in getattr(request, "rate_limit_headers", {}).items():
            response[name] = value
        return response
