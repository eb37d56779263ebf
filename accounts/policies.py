"""Endpoint policies: defaults defined once here, the database row wins.

Rows are cached per process (jobsite.process_cache): any save bumps the version every process checks, so an
edit is seen everywhere within POLICY_CHECK_INTERVAL without a restart.
"""

from typing import Any, cast

from django.db import transaction
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver
from rest_framework.request import Request

from accounts.endpoints import Endpoint
from accounts.models import EndpointPolicy, RateLimitAlgorithm, RateLimitKey
from accounts.requests import PolicyRequest
from jobsite.process_cache import settings_cache

_JOB_SUBMIT = {
    "scopes": "jobs:run",
    "rate_limit_algorithm": RateLimitAlgorithm.TOKEN_BUCKET,
    "rate_limit_key": RateLimitKey.USER,
    "rate_limit": 2000,
    "rate_window": 60,
    "refill_rate": 2000,
}
_COMPAT = {
    # Anonymous access is off unless staff (or the run command's demo, seed_demo) turn it on.
    "auth_required": True,
    "rate_limit_algorithm": RateLimitAlgorithm.FIXED_WINDOW,
    # Per user, anonymous callers per IP: anonymous traffic never spends an authenticated user's quota.
    "rate_limit_key": RateLimitKey.USER,
    "rate_limit": 1200,
    "rate_window": 60,
}

SYNC_MAX_CONCURRENT_PER_USER = 4
"""Default cap on one user's sync jobs at a time: each holds a web thread while it runs, and the run
command's web tier has 16 (2 gunicorn workers x 8 threads), so no single user can take it over."""

ENDPOINT_DEFAULTS: dict[str, dict[str, Any]] = {
    Endpoint.JOBS_SYNC: {**_JOB_SUBMIT, "max_concurrent_per_user": SYNC_MAX_CONCURRENT_PER_USER},
    Endpoint.JOBS_ASYNC: {**_JOB_SUBMIT, "max_concurrent_per_user": 1000},
    Endpoint.JOBS_READ: {"scopes": "jobs:read"},
    Endpoint.CREDITS_READ: {"scopes": "credits:read"},
    Endpoint.COMPAT_SYNC: {**_COMPAT},
    # No per-user cap: every anonymous caller shares one owner; the per-IP rate limit governs them.
    Endpoint.COMPAT_ASYNC: {**_COMPAT},
    Endpoint.COMPAT_READ: {**_COMPAT},
    Endpoint.ACCOUNT_READ: {},
    Endpoint.AUTH_TOKEN: {
        "rate_limit_algorithm": RateLimitAlgorithm.TOKEN_BUCKET,
        "rate_limit_key": RateLimitKey.USER,
        "rate_limit": 60,
        "rate_window": 60,
        "refill_rate": 60,
    },
    # Prometheus scrapes anonymously by convention; the counters hold no per-user data. Staff may require more.
    Endpoint.METRICS_READ: {"auth_required": False},
    Endpoint.ACCOUNT_WRITE: {
        "scopes": "account:write",
        "rate_limit_algorithm": RateLimitAlgorithm.TOKEN_BUCKET,
        "rate_limit_key": RateLimitKey.USER,
        "rate_limit": 30,
        "rate_window": 60,
        "refill_rate": 30,
    },
    # Each call makes the service POST to a URL of the caller's choosing: a few a minute are all a test needs.
    Endpoint.WEBHOOKS_TEST: {
        "scopes": "account:write",
        "rate_limit_algorithm": RateLimitAlgorithm.TOKEN_BUCKET,
        "rate_limit_key": RateLimitKey.USER,
        "rate_limit": 10,
        "rate_window": 60,
        "refill_rate": 10,
    },
    # Batches and their uploads: one call may queue batch_max_jobs jobs, and a file comes in many PATCHes.
    Endpoint.JOBS_BATCH: {**_JOB_SUBMIT, "rate_limit": 600, "refill_rate": 600},
}
"""Every endpoint policy that exists, with what differs from the model's field defaults."""


def get_endpoint_policy(name: str) -> EndpointPolicy:
    """The policy for an endpoint name; an unsaved row built from the defaults if none is stored."""
    if name not in ENDPOINT_DEFAULTS:
        raise KeyError(f"unknown endpoint policy {name!r}")

    def load() -> EndpointPolicy:
        row = EndpointPolicy.objects.filter(name=name).first()
        return row or EndpointPolicy(name=name, **ENDPOINT_DEFAULTS[name])

    return settings_cache.get((EndpointPolicy, name), load)


def governing_policies(request: Request) -> list[EndpointPolicy]:
    """The policies a request answers to: its route's, and for an authenticated caller the one it adds."""
    policies = [cast(PolicyRequest, request).policy]
    extra: EndpointPolicy | None = getattr(request, "authenticated_policy", None)
    if extra is not None and request.user is not None and request.user.is_authenticated:
        policies.append(extra)
    return policies


@receiver([post_save, post_delete], sender=EndpointPolicy)
def _on_policy_change(**kwargs: Any) -> None:
    # After commit: a version bumped earlier could let another process cache the old row under the new version.
    settings_cache.clear()
    transaction.on_commit(settings_cache.changed)
