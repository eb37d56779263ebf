"""rq cron configuration: `manage.py rqcron jobs.cron` runs the reconciler periodically."""

from django.conf import settings
from rq import cron

from jobs.queues import MAINTENANCE_QUEUE
from jobs.tasks import reconcile

cron.register(reconcile, MAINTENANCE_QUEUE, interval=settings.RECONCILE_INTERVAL, job_timeout=300)
