"""DRF throttle that applies the endpoint policy's rate limit (accounts.ratelimit) and sets the RateLimit headers."""

import logging
from typing import Any

from django.conf import settings
from redis.exceptions import RedisError
from rest_framework.request import Request
from rest_framework.throttling import BaseThrottle

from accounts import metrics
from accounts.endpoints import JOB_CREATING_ENDPOINTS
from accounts.models import EndpointPolicy, RateLimitAlgorithm, RateLimitKey
from accounts.policies import governing_policies
from accounts.ratelimit import RateLimitDecision, rate_limit_hit, rate_limit_state_key
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


def _limiter_unreachable(policy: EndpointPolicy) -> bool:
    """Whether a call may pass when Redis is down: reads may (setting), job creation never."""
    if policy.name in JOB_CREATING_ENDPOINTS or not settings.RATELIMIT_FAIL_OPEN_READS:
        raise ServiceUnavailable("The rate limiter is unreachable; try again shortly.") from None
    logger.warning("rate limiter unreachable; %s fails open", policy.name, exc_info=True)
    return True


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


class PolicyRateThrottle(BaseThrottle):
    """Counts the call against each governing policy's limiter; a rejection raises 429 `rate_limited`."""

    def allow_request(self, request: Request, view: Any) -> bool:
        headers: dict[str, list[str]] = {}
        try:
            for policy in governing_policies(request):
                decision = self._hit(request, policy)
                if decision is None:
                    continue
                for name, value in rate_limit_headers(policy, decision).items():
                    headers.setdefault(name, []).append(value)
                if not decision.allowed:
                    raise _rejected(decision, policy.name, policy.rate_limit_algorithm, policy.rate_limit_key)
        finally:
            # EndpointView.finalize_response puts these on every response, errors included.
            request.rate_limit_headers = {name: ", ".join(values) for name, values in headers.items()}
        return True

    def _hit(self, request: Request, policy: EndpointPolicy) -> RateLimitDecision | None:
        if policy.rate_limit_algorithm == RateLimitAlgorithm.NONE:
            return None
        subject = rate_limit_subject(request, policy.rate_limit_key)
        try:
            decision = rate_limit_hit(
                algorithm=policy.rate_limit_algorithm,
                key=rate_limit_state_key(scope=policy.name, algorithm=policy.rate_limit_algorithm, subject=subject),
                limit=policy.rate_limit,
                window=policy.rate_window,
                refill_rate=policy.refill_rate,
            )
        except RedisError:
            _limiter_unreachable(policy)
            return None
        return decision


ANONYMOUS_BUDGET_SCOPE = "anonymous-budget"
"""The limiter state shared by every anonymous caller of every route (settings.ANONYMOUS_BUDGET)."""


class AnonymousBudgetThrottle(BaseThrottle):
    """All anonymous callers together get settings.ANONYMOUS_BUDGET calls per window; the authenticated none of it."""

    def allow_request(self, request: Request, view: Any) -> bool:
        user = getattr(request, "user", None)
        if (user is not None and user.is_authenticated) or not getattr(view, "anonymous_budget", True):
            return True
        algorithm = RateLimitAlgorithm.FIXED_WINDOW
        try:
            decision = rate_limit_hit(
                algorithm=algorithm,
                key=rate_limit_state_key(scope=ANONYMOUS_BUDGET_SCOPE, algorithm=algorithm, subject="global"),
                limit=settings.ANONYMOUS_BUDGET,
                window=settings.ANONYMOUS_BUDGET_WINDOW,
                refill_rate=settings.ANONYMOUS_BUDGET,
            )
        except RedisError:
            return _limiter_unreachable(request.policy)
        if not decision.allowed:
            raise _rejected(decision, ANONYMOUS_BUDGET_SCOPE, algorithm, RateLimitKey.GLOBAL)
        return True


POLICY_THROTTLES: tuple[type[BaseThrottle], ...] = (AnonymousBudgetThrottle, PolicyRateThrottle)
"""The throttles every policy-governed endpoint runs ."""
