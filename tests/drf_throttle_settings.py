"""Settings for a comparison server whose endpoints run DRF's own UserRateThrottle (10/hour) instead of ours."""

from jobsite.settings import *  # noqa: F403
from jobsite.settings import REST_FRAMEWORK

ENDPOINT_THROTTLES = "tests.drf_throttles.drf_user_rate_throttle"
REST_FRAMEWORK = {**REST_FRAMEWORK, "DEFAULT_THROTTLE_RATES": {"user": "10/hour"}}
