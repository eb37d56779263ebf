"""Every policy-governed endpoint by name: the names staff see in the admin and clients in RateLimit headers."""

from enum import StrEnum


class Endpoint(StrEnum):
    JOBS_SYNC = "jobs.sync"
    JOBS_ASYNC = "jobs.async"
    JOBS_READ = "jobs.read"
    CREDITS_READ = "credits.read"
    COMPAT_SYNC = "compat.sync"
    COMPAT_ASYNC = "compat.async"
    COMPAT_READ = "compat.read"
    ACCOUNT_READ = "account.read"
    ACCOUNT_WRITE = "account.write"
    AUTH_TOKEN = "auth.token"
    METRICS_READ = "metrics.read"
    WEBHOOKS_TEST = "webhooks.test"
    JOBS_BATCH = "jobs.batch"


JOB_CREATING_ENDPOINTS = frozenset(
    {Endpoint.JOBS_SYNC, Endpoint.JOBS_ASYNC, Endpoint.JOBS_BATCH, Endpoint.COMPAT_SYNC, Endpoint.COMPAT_ASYNC}
)
"""Endpoints that start work that costs: their rate limiter fails closed (503) when Redis is unreachable."""

AUTHENTICATED_ALSO_GOVERNED_BY = {
    Endpoint.COMPAT_SYNC: Endpoint.JOBS_SYNC,
    Endpoint.COMPAT_ASYNC: Endpoint.JOBS_ASYNC,
    Endpoint.COMPAT_READ: Endpoint.JOBS_READ,
}
"""A caller who authenticated on a compatible route is also held to the API policy of the same action:
a key gets nothing through `/sync` that `/api/v1/jobs/sync/` would refuse it (scopes, IP, MFA, rate limit)."""
