"""DRF throttles: the anonymous budget and the endpoint policies' rate limits (accounts.ratelimit), in one round trip."""

import logging
from collections.abc import Sequence
from typing import cast

from django.conf import settings
from redis.exceptions import RedisError
from rest_framework.request import Request
from rest_framework.throttling import BaseThrottle
from rest_framework.views import APIView

from accounts import metrics
from accounts.endpoints import JOB_CREATING_ENDPOINTS
from accounts.models import EndpointPolicy, RateLimitAlgorithm, RateLimitKey
from accounts.policies import governing_policies
from accounts.ratelimit import Limiter, RateLimitDecision, rate_limit_hit_all, rate_limit_state_key
from accounts.requests import PolicyRequest
from jobsite.client_ip import client_ip
from jobsite.errors import RateLimited, ServiceUnavailable

logger = logging.getLogger(__name__)


def rate_limit_subject(request: Request, key: str) -> str:
    """Who the limit counts: the user (anonymous callers by IP), the client IP, or everyone."""
    if key == RateLimitKey.GLOBAL:
        return "global"
    user = getattr(request, "user", None)
    if key == RateLimitKey.USER and user is not None and user.is_authenticated:
        return f"user:{user.pk}"
    return f"ip:{client_ip(request)}"


def rate_limit_headers(policy: EndpointPolicy, decision: RateLimitDecision) -> dict[str, str]:
    """The IETF httpapi RateLimit-Policy and RateLimit fields (API.md)."""
    return {
        "RateLimit-Policy": f'"{policy.name}";q={decision.quota};w={decision.window}',
        "RateLimit": f'"{policy.name}";r={decision.remaining};t={decision.reset_seconds}',
    }


def _limiter_unreachable(policy: EndpointPolicy) -> None:
    """Let a call pass when Redis is down where the policy may (reads, by setting); job creation never."""
    if policy.name in JOB_CREATING_ENDPOINTS or not settings.RATELIMIT_FAIL_OPEN_READS:
        raise ServiceUnavailable("The rate limiter is unreachable; try again shortly.") from None
    logger.warning("rate limiter unreachable; %s fails open", policy.name, exc_info=True)


def _rejected(decision: RateLimitDecision, name: str, algorithm: str, key: str) -> RateLimited:
    wait = decision.retry_after_seconds
    metrics.RATE_LIMIT_REJECTIONS.labels(endpoint=name, algorithm=algorithm).inc()
    return RateLimited(
        f"Rate limit of {name} exceeded: {decision.quota} per {decision.window} s "
        f"({algorithm}, per {key}); retry in {wait} s.",
        headers={"Retry-After": str(wait)},
        limit={"policy": name, "algorithm": algorithm, "key": key, "quota": decision.quota, "window": decision.window},
        retry_after=wait,
    )


class LimiterThrottle(BaseThrottle):
    """A throttle that names the limiters a call counts against, then judges their decisions.

    rate_limits_check runs the limiters of all of a view's throttles in one round trip (EndpointView);
    allow_request runs one throttle on its own, as DRF would.
    """

    def limiters(self, request: Request, view: APIView) -> list[Limiter]:
        raise NotImplementedError

    def admit(self, request: Request, decisions: list[RateLimitDecision | None]) -> None:
        """Raise the problem of a rejection; None stands for a limiter that did not run (an earlier one refused)."""
        raise NotImplementedError

    def unreachable(self, request: Request) -> None:
        """Redis could not be asked: raise 503 where the call must not pass unlimited."""
        raise NotImplementedError

    def allow_request(self, request: Request, view: APIView) -> bool:
        rate_limits_check(request, view, [self])
        return True


def rate_limits_check(request: Request, view: APIView, throttles: Sequence[LimiterThrottle]) -> None:
    """Count the call against every throttle's limiters, in order, in one round trip; each throttle judges its own."""
    planned = [(throttle, throttle.limiters(request, view)) for throttle in throttles]
    try:
        decisions = iter(rate_limit_hit_all([limiter for _, limiters in planned for limiter in limiters]))
    except RedisError:
        for throttle, limiters in planned:
            if limiters:
                throttle.unreachable(request)
        return
    for throttle, limiters in planned:
        throttle.admit(request, [next(decisions, None) for _ in limiters])


def _policy_limiter(request: Request, policy: EndpointPolicy) -> Limiter:
    subject = rate_limit_subject(request, policy.rate_limit_key)
    return Limiter(
        algorithm=policy.rate_limit_algorithm,
        key=rate_limit_state_key(scope=policy.name, algorithm=policy.rate_limit_algorithm, subject=subject),
        limit=policy.rate_limit,
        window=policy.rate_window,
        refill_rate=policy.refill_rate,
    )


def _limited_policies(request: Request) -> list[EndpointPolicy]:
    return [policy for policy in governing_policies(request) if policy.rate_limit_algorithm != RateLimitAlgorithm.NONE]


class PolicyRateThrottle(LimiterThrottle):
    """Counts the call against each governing policy's limiter; a rejection raises 429 `rate_limited`.

    Sets request.rate_limit_headers, which EndpointView.finalize_response puts on every response, errors included.
    """

    def limiters(self, request: Request, view: APIView) -> list[Limiter]:
        return [_policy_limiter(request, policy) for policy in _limited_policies(request)]

    def admit(self, request: Request, decisions: list[RateLimitDecision | None]) -> None:
        headers: dict[str, list[str]] = {}
        try:
            for policy, decision in zip(_limited_policies(request), decisions, strict=True):
                if decision is None:
                    return
                for name, value in rate_limit_headers(policy, decision).items():
                    headers.setdefault(name, []).append(value)
                if not decision.allowed:
                    raise _rejected(decision, policy.name, policy.rate_limit_algorithm, policy.rate_limit_key)
        finally:
            cast(PolicyRequest, request).rate_limit_headers = {
                name: ", ".join(values) for name, values in headers.items()
            }

    def unreachable(self, request: Request) -> None:
        cast(PolicyRequest, request).rate_limit_headers = {}
        for policy in _limited_policies(request):
            _limiter_unreachable(policy)


ANONYMOUS_BUDGET_SCOPE = "anonymous-budget"
"""The limiter state shared by every anonymous caller of every route (settings.ANONYMOUS_BUDGET)."""


class AnonymousBudgetThrottle(LimiterThrottle):
    """All anonymous callers together get settings.ANONYMOUS_BUDGET calls per window; the authenticated none of it.

    A view opts out with `anonymous_budget = False` (monitoring must work while anonymous job traffic is cut off).
    """

    algorithm = RateLimitAlgorithm.FIXED_WINDOW

    def limiters(self, request: Request, view: APIView) -> list[Limiter]:
        user = getattr(request, "user", None)
        if (user is not None and user.is_authenticated) or not getattr(view, "anonymous_budget", True):
            return []
        return [
            Limiter(
                algorithm=self.algorithm,
                key=rate_limit_state_key(scope=ANONYMOUS_BUDGET_SCOPE, algorithm=self.algorithm, subject="global"),
                limit=settings.ANONYMOUS_BUDGET,
                window=settings.ANONYMOUS_BUDGET_WINDOW,
            )
        ]

    def admit(self, request: Request, decisions: list[RateLimitDecision | None]) -> None:
        for decision in decisions:
            if decision is not None and not decision.allowed:
                raise _rejected(decision, ANONYMOUS_BUDGET_SCOPE, self.algorithm, RateLimitKey.GLOBAL)

    def unreachable(self, request: Request) -> None:
        _limiter_unreachable(cast(PolicyRequest, request).policy)


POLICY_THROTTLES: tuple[type[LimiterThrottle], ...] = (AnonymousBudgetThrottle, PolicyRateThrottle)
"""The throttles every policy-governed endpoint runs, in order: the anonymous budget, then the policies' limits."""
