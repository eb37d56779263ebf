from rest_framework.throttling import BaseThrottle, UserRateThrottle


def drf_user_rate_throttle() -> list[type[BaseThrottle]]:
    """DRF's UserRateThrottle on Django's cache (Redis): the baseline our exact limiters are compared with."""
    return [UserRateThrottle]
