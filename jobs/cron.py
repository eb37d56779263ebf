"""rq cron configuration: `manage.py cron` runs the reconciler and the retention purge periodically (`rqcron jobs.cron` would too, without
surviving a Redis outage)."""

from django.conf import settings
from rq import cron

from jobs.queues import MAINTENANCE_QUEUE
from jobs.tasks import check_ledger, purge_expired, reconcile

LEDGER_CHECK_INTERVAL = 300
"""Seconds between ledger checks: a sum over every entry, so rarer than the reconciler."""

cron.register(reconcile, MAINTENANCE_QUEUE, interval=settings.RECONCILE_INTERVAL, job_timeout=300)
cron.register(purge_expired, MAINTENANCE_QUEUE, interval=settings.PURGE_INTERVAL, job_timeout=600)
cron.register(check_ledger, MAINTENANCE_QUEUE, interval=LEDGER_CHECK_INTERVAL, job_timeout=300)
