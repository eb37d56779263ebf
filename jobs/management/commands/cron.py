"""`manage.py cron`: rq's cron scheduler for jobs.cron (the reconciler), kept alive through Redis outages."""

import logging
from typing import Any

from django.core.management.base import BaseCommand

from jobs.worker import ResilientCronScheduler

CRON_CONFIG = "jobs.cron"
"""Module whose rq.cron.register calls define the periodic jobs."""


class Command(BaseCommand):
    help = "Run the periodic jobs of jobs.cron; waits for Redis and carries on when it goes away (unlike rqcron)."

    def handle(self, *args: Any, **options: Any) -> None:
        scheduler = ResilientCronScheduler(logging_level=logging.INFO)
        scheduler.load_config_from_file(CRON_CONFIG)
        scheduler.start()
