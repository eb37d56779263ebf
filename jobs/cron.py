"""rq cron configuration: `manage.py cron` runs the reconciler periodically (`rqcron jobs.cron` would too, without
surviving a Redis outage)."""

from django.conf import settings
from rq import cron

from jobs.queues import MAINTENANCE_QUEUE
from jobs.tasks import reconcile

cron.register(reconcile, MAINTENANCE_QUEUE, interval=settings.RECONCILE_INTERVAL, job_timeout=300)
