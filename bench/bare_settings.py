"""Settings of the bare reference (bench/bare_reference.py): the service's own, with a URL conf of one bare view."""

from jobsite.settings import *  # noqa: F403  # the same middleware, database, Redis and logging as the service

ROOT_URLCONF = "bench.bare_urls"
