"""HTTP helpers for the traffic-policy tests: real concurrent clients against a running gunicorn."""

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx


def fire_concurrently(count: int, send: Callable[[httpx.Client, int], httpx.Response]) -> list[httpx.Response]:
    """Send `count` requests from `count` threads released together by a barrier."""
    barrier = threading.Barrier(count)
    limits = httpx.Limits(max_connections=count, max_keepalive_connections=count)
    with httpx.Client(timeout=60, limits=limits) as client, ThreadPoolExecutor(count) as pool:

        def one(index: int) -> httpx.Response:
            barrier.wait()
            return send(client, index)

        return list(pool.map(one, range(count)))
