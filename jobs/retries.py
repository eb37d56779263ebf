"""Retries of transient failures: how long to wait before the next attempt."""

import random

from jobs.models import KindSettings


def retry_delay(kind_settings: KindSettings, *, attempt: int) -> float | None:
    """Seconds before the next attempt after `attempt` failed transiently, or None when none is left.

    Exponential backoff with equal jitter: half the step is fixed, half random, so retries spread out.
    """
    if attempt > kind_settings.retries:
        return None
    step = kind_settings.retry_backoff * 2 ** (attempt - 1)
    return step / 2 + random.uniform(0, step / 2)
