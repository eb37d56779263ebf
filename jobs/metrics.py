"""Prometheus metrics of jobs, webhooks, limits, credits, cache and circuit: their definitions, which code
anywhere increments.

Web and worker processes write to PROMETHEUS_MULTIPROC_DIR (the launcher sets it), so one scrape of
/metrics shows what every process did; jobs/metrics_view.py serves them, with live state read from Redis.
"""

from prometheus_client import Counter, Histogram

from jobsite.redis import redis_key

DURATION_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
"""Seconds; jobs range from sub-millisecond hashes to fetches bounded by their time limit."""

JOBS_SUBMITTED = Counter("jobsite_jobs_submitted_total", "Jobs accepted, by kind and mode.", ["kind", "mode"])
JOBS_FINISHED = Counter(
    "jobsite_jobs_finished_total",
    "Jobs that reached a final state, by kind, mode and outcome.",
    ["kind", "mode", "outcome"],
)
JOB_QUEUE_WAIT = Histogram(
    "jobsite_job_queue_wait_seconds",
    "Time from acceptance (or going back on the queue) to a worker's claim, by kind, pool and priority.",
    ["kind", "queue", "priority"],
    buckets=DURATION_BUCKETS,
)
JOBS_RELEASED = Counter(
    "jobsite_jobs_released_total", "Held jobs queued once their condition held, by what held them.", ["held"]
)
JOB_RELEASE_LATENESS = Histogram(
    "jobsite_job_release_lateness_seconds",
    "Time from a scheduled job's run_at to its release onto the queue.",
    buckets=DURATION_BUCKETS,
)
JOB_RUN_TIME = Histogram(
    "jobsite_job_run_seconds",
    "Time a job ran, by kind, pool (web: sync jobs and cache hits, run in the web process) and priority.",
    ["kind", "queue", "priority"],
    buckets=DURATION_BUCKETS,
)
WEB_QUEUE_LABEL = "web"
"""The `queue` label of jobs that ran in the web process (sync jobs, cache hits): they were never queued."""
WEBHOOK_DELIVERIES = Counter(
    "jobsite_webhook_deliveries_total",
    "Webhook delivery attempts, by outcome and attempt number.",
    ["outcome", "attempt"],
)
CREDITS = Counter("jobsite_credits_total", "Credits moved by job charges and refunds.", ["type"])
JOBS_PURGED = Counter("jobsite_jobs_purged_total", "Final jobs deleted by purge_jobs (committed batches).")
CACHE_LOOKUPS = Counter("jobsite_cache_lookups_total", "Result cache lookups, by kind and result.", ["kind", "result"])


RECONCILER_LAST_RUN_KEY = redis_key("reconciler", "last_run")
"""Unix time of the reconciler's last completed run (written by jobs.tasks.reconcile)."""
LEDGER_CHECK_KEY = redis_key("credits", "ledger_mismatches")
"""Accounts out of balance with their ledger at the last check (written by jobs.tasks.check_ledger)."""
