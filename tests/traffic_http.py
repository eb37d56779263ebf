"""HTTP helpers for the traffic-policy tests: real concurrent clients against a running gunicorn."""

import contextlib
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
from django.conf import settings
from django.test import Client
from django.utils.crypto import get_random_string
from redis.exceptions import RedisError

from accounts.models import User
from jobs.models import EndpointPolicy
from jobs.policies import ENDPOINT_DEFAULTS, POLICY_VERSION_KEY
from jobsite.redis import get_redis

SERVER_POLICY_CHECK = 0.3
"""Seconds after a policy edit until every server process has re-read it (subprocess_env: interval 0.2 s)."""


def auth_headers(user: User) -> dict[str, str]:
    """The ONE place these tests build HTTP credentials for a user: a session cookie plus a CSRF token."""
    client = Client()
    client.force_login(user)
    session = client.cookies[settings.SESSION_COOKIE_NAME].value
    token = get_random_string(32)
    return {
        "Cookie": f"{settings.SESSION_COOKIE_NAME}={session}; {settings.CSRF_COOKIE_NAME}={token}",
        "X-CSRFToken": token,
    }


def set_policy(name: str, *, over_http: bool = False, **fields: Any) -> EndpointPolicy:
    """Store an endpoint policy (defaults + fields); over_http waits until server processes see it."""
    policy, _ = EndpointPolicy.objects.update_or_create(name=name, defaults={**ENDPOINT_DEFAULTS[name], **fields})
    # A fresh random version: after a test's FLUSHDB a plain INCR could repeat a version a server has cached.
    with contextlib.suppress(RedisError):  # tests of a dead Redis edit policies too
        get_redis().set(POLICY_VERSION_KEY, uuid.uuid4().hex)
    if over_http:
        time.sleep(SERVER_POLICY_CHECK)
    return policy


def fire_concurrently(count: int, send: Callable[[httpx.Client, int], httpx.Response]) -> list[httpx.Response]:
    """Send `count` requests from `count` threads released together by a barrier."""
    barrier = threading.Barrier(count)
    limits = httpx.Limits(max_connections=count, max_keepalive_connections=count)
    with httpx.Client(timeout=60, limits=limits) as client, ThreadPoolExecutor(count) as pool:

        def one(index: int) -> httpx.Response:
            barrier.wait()
            return send(client, index)

        return list(pool.map(one, range(count)))
