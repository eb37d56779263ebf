"""Helpers for the access-control tests: policies, keys, TOTP codes."""

import time
from typing import Any

from django_otp.oath import TOTP
from django_otp.plugins.otp_totp.models import TOTPDevice

from accounts.models import EndpointPolicy, RateLimitAlgorithm, User
from accounts.policies import ENDPOINT_DEFAULTS


def set_policy(name: str, **fields: Any) -> EndpointPolicy:
    """Store the policy row: its defaults plus `fields` (the save signal invalidates every policy cache)."""
    policy, _ = EndpointPolicy.objects.update_or_create(name=name, defaults={**ENDPOINT_DEFAULTS[name], **fields})
    if policy.rate_limit_algorithm == RateLimitAlgorithm.FIXED_WINDOW:
        clear_of_window_edge(policy.rate_window)
    return policy


WINDOW_EDGE_MARGIN_SECONDS = 5.0
"""A test's calls take well under this: starting further from a fixed window's end keeps them in one window."""


def clear_of_window_edge(window_seconds: int) -> None:
    """Sleep past the end of the epoch-aligned fixed window if it ends within the margin (a test counting its
    calls would otherwise see the counter reset between two of them)."""
    left = window_seconds - time.time() % window_seconds
    if left < WINDOW_EDGE_MARGIN_SECONDS:
        time.sleep(left + 0.05)


COMPAT_POLICIES = ("compat.sync", "compat.async", "compat.read")


def open_compat_to_anonymous() -> None:
    """What the run command's demo (seed_demo) does: anonymous callers may use the compatible routes."""
    for name in COMPAT_POLICIES:
        set_policy(name, auth_required=False)


def totp_code(device: TOTPDevice, steps: int = 0) -> str:
    """The code the user's authenticator shows now (or `steps` time steps later): it knows no drift."""
    totp = TOTP(device.bin_key, device.step, device.t0, device.digits)
    totp.time = time.time() + steps * device.step
    return f"{totp.token():0{device.digits}d}"


def wrong_code(device: TOTPDevice) -> str:
    """A well-formed code that is valid for no step within the device's tolerance."""
    valid = {totp_code(device, steps) for steps in range(-3 * device.tolerance - 1, 3 * device.tolerance + 2)}
    return next(code for code in (f"{n:06d}" for n in range(1_000_000)) if code not in valid)


def confirmed_device(user: User) -> TOTPDevice:
    return TOTPDevice.objects.create(user=user, name="default", confirmed=True)
