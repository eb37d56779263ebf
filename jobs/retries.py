"""Retries (of jobs' transient failures and of webhook deliveries): how long to wait before the next attempt."""

import random

from jobs.models import KindSettings


def backoff_with_jitter(*, base: float, retry_index: int, ceiling: float = float("inf")) -> float:
    """Exponential backoff with equal jitter: half the step is fixed, half random, so retries spread out.

    retry_index 0 is the first retry; the step doubles each time, up to `ceiling`.
    """
    step = min(ceiling, base * 2**retry_index)
    return step / 2 + random.uniform(0, step / 2)


def retry_delay(kind_settings: KindSettings, *, attempt: int) -> float | None:
    """Seconds before the next attempt after `attempt` failed transiently, or None when none is left."""
    if attempt > kind_settings.retries:
        return None
    return backoff_with_jitter(base=kind_settings.retry_backoff, retry_index=attempt - 1)
