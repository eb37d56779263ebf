"""GET /api/v1/me/limits/: every endpoint's limits as they stand for the caller, without spending any."""

from typing import Any

from django.db.models import Sum
from redis.exceptions import RedisError
from rest_framework.request import Request

from accounts.models import EndpointPolicy, RateLimitAlgorithm
from accounts.policies import ENDPOINT_DEFAULTS, get_endpoint_policy
from accounts.ratelimit import rate_limit_peek, rate_limit_state_key
from accounts.requests import AuthenticatedRequest
from accounts.throttles import rate_limit_subject
from credits.selectors import credit_balance
from jobs.models import ConcurrencySlot


def _rate_limit(request: Request, policy: EndpointPolicy) -> dict[str, Any] | None:
    if policy.rate_limit_algorithm == RateLimitAlgorithm.NONE:
        return None
    algorithm, subject = policy.rate_limit_algorithm, rate_limit_subject(request, policy.rate_limit_key)
    limit = {"algorithm": algorithm, "key": policy.rate_limit_key, "window": policy.rate_window}
    try:
        decision = rate_limit_peek(
            algorithm=algorithm,
            key=rate_limit_state_key(scope=policy.name, algorithm=algorithm, subject=subject),
            limit=policy.rate_limit,
            window=policy.rate_window,
            refill_rate=policy.refill_rate,
        )
    except RedisError:
        return {**limit, "quota": policy.rate_limit, "remaining": None, "reset": None}  # unknown right now
    return {**limit, "quota": decision.quota, "remaining": decision.remaining, "reset": decision.reset_seconds}


def caller_limits(request: AuthenticatedRequest) -> dict[str, Any]:
    """Per endpoint: enabled, rate limit (quota, remaining, reset in s), concurrency caps and jobs holding them."""
    slots = ConcurrencySlot.objects.all()
    in_use_global = dict(slots.values_list("endpoint").annotate(n=Sum("in_use")).order_by())
    in_use_mine = dict(slots.filter(owner=request.user).values_list("endpoint", "in_use"))
    endpoints = []
    for name in ENDPOINT_DEFAULTS:
        policy = get_endpoint_policy(name)
        endpoints.append(
            {
                "name": name,
                "enabled": policy.enabled,
                "rate_limit": _rate_limit(request, policy),
                "max_priority": policy.max_priority,
                "concurrency": {
                    "max_per_user": policy.max_concurrent_per_user or None,
                    "max_global": policy.max_concurrent_global or None,
                    "in_use_by_you": in_use_mine.get(name, 0),
                    "in_use_global": in_use_global.get(name, 0),
                },
            }
        )
    balance = credit_balance(user=request.user)
    return {"balance": balance, "endpoints": endpoints}
