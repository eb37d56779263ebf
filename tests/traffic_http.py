"""HTTP helpers for the traffic-policy tests: real concurrent clients against a running gunicorn."""

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from accounts.models import EndpointPolicy
from tests import access_helpers

SERVER_POLICY_CHECK = 0.3
"""Seconds after a policy edit until every server process has re-read it (subprocess_env: interval 0.2 s)."""


def set_policy(name: str, *, over_http: bool = False, **fields: Any) -> EndpointPolicy:
    """Store an endpoint policy (defaults + fields); over_http waits until server processes see it."""
    policy = access_helpers.set_policy(name, **fields)
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
