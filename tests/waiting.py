"""Waiting on conditions, never for fixed times: a test goes on as soon as what it waits for is true."""

import time
from collections.abc import Callable
from typing import Any

import httpx


def wait_until(predicate: Callable[[], Any], *, timeout: float = 15.0, interval: float = 0.05) -> Any:
    """The predicate's first truthy value, polled every `interval` seconds; AssertionError after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s")


def wait_answering(url: str, *, timeout: float = 30) -> None:
    """Until the service at `url` answers /healthz: 200, or 503 while a backing service is down."""

    def answers() -> bool:
        try:
            return httpx.get(f"{url}/healthz", timeout=1).status_code in (200, 503)
        except httpx.HTTPError:
            return False

    wait_until(answers, timeout=timeout, interval=0.2)
