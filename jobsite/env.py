"""Strict parsing of the environment: every setting is read here once, and bad values fail loudly."""

import os
from collections.abc import Callable
from typing import TypeVar

from django.core.exceptions import ImproperlyConfigured

from jobsite.sizing import job_pools

T = TypeVar("T")

_TRUE = {"true", "1"}
_FALSE = {"false", "0"}


def _read(name: str, default: T, parse: Callable[[str], T]) -> T:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return parse(raw.strip())
    except ValueError as exc:
        raise ImproperlyConfigured(f"environment variable {name}={raw!r}: {exc}") from None


def _parse_bool(raw: str) -> bool:
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise ValueError("expected true or false (or 1 or 0)")


def _parse_list(raw: str) -> list[str]:
    return [item.strip() for item in raw.split(",") if item.strip()]


def env_str(name: str, default: str = "") -> str:
    return _read(name, default, str)


def env_bool(name: str, default: bool) -> bool:
    return _read(name, default, _parse_bool)


def env_int(name: str, default: int, *, minimum: int = 0) -> int:
    def parse(raw: str) -> int:
        value = int(raw)
        if value < minimum:
            raise ValueError(f"must be >= {minimum}")
        return value

    return _read(name, default, parse)


def env_float(name: str, default: float, *, minimum: float = 0.0) -> float:
    def parse(raw: str) -> float:
        value = float(raw)
        if value < minimum:
            raise ValueError(f"must be >= {minimum}")
        return value

    return _read(name, default, parse)


def env_list(name: str, default: list[str] | None = None) -> list[str]:
    return _read(name, list(default or []), _parse_list)


def env_choice(name: str, default: str, choices: tuple[str, ...]) -> str:
    def parse(raw: str) -> str:
        if raw not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}")
        return raw

    return _read(name, default, parse)


def _parse_ports(raw: str) -> frozenset[int]:
    ports: set[int] = set()
    for item in _parse_list(raw):
        low, _, high = item.partition("-")
        first, last = int(low), int(high or low)
        if not 1 <= first <= last <= 65535:
            raise ValueError(f"{item!r} is not a port or range within 1-65535")
        ports.update(range(first, last + 1))
    return frozenset(ports)


def env_ports(name: str, default: str) -> frozenset[int]:
    """A set of TCP ports written as a comma-separated list of ports and ranges: `80,443,1024-65535`."""
    return _read(name, _parse_ports(default), _parse_ports)


def env_pools(name: str) -> dict[str, int]:
    """Worker pools `name:size,...` (jobsite.sizing.job_pools: the default pool sized by RQ_WORKERS)."""
    try:
        return job_pools(os.environ)
    except ValueError as exc:
        raise ImproperlyConfigured(f"environment variable {name}={os.environ.get(name, '')!r}: {exc}") from None


def env_weights(name: str, default: dict[str, int]) -> dict[str, int]:
    """Positive whole weights for exactly the default's names, `high:4,normal:2,low:1`; unnamed ones keep theirs."""

    def parse(raw: str) -> dict[str, int]:
        weights = dict(default)
        for item in _parse_list(raw):
            key, _, value = item.partition(":")
            if key not in default or not value.isdigit() or int(value) < 1:
                raise ValueError(f"{item!r}: expected one of {', '.join(default)} with a whole weight >= 1")
            weights[key] = int(value)
        return weights

    return _read(name, dict(default), parse)
