"""Jobsite settings: every value comes from the environment through jobsite.env (strict, fails loudly)."""

import hashlib
from datetime import timedelta
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from jobsite.env import (
    env_bool,
    env_choice,
    env_float,
    env_int,
    env_list,
    env_pools,
    env_ports,
    env_str,
    env_weights,
)
from jobsite.logs import logging_config
from jobsite.sizing import ADMISSION_PER_JOB_WORKER

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = BASE_DIR / "var"

DEBUG = env_bool("DEBUG", False)
SECRET_KEY = env_str("SECRET_KEY")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("SECRET_KEY is required when DEBUG is off")
    SECRET_KEY = "insecure-development-key-only-used-with-DEBUG-on"
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"])

INSTALLED_APPS = [
    "jobsite",
    "django_prometheus",
    "accounts.apps.JobsiteAdminConfig",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",  # Swagger UI and ReDoc served from our static files: no CDN, works offline
    "jobsite.admin_apps.RqConfig",
    "django_otp",
    "jobsite.admin_apps.OtpTotpAdminConfig",
    "accounts",
    "credits",
    "jobs",
]

MIDDLEWARE = [
    "jobsite.edge.HostCheckMiddleware",
    "django_prometheus.middleware.PrometheusBeforeMiddleware",
    "jobsite.middleware.RequestContextMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "jobsite.edge.ApiEdgeMiddleware",  # after WhiteNoise: static files are no route, yet not a 404
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django_otp.middleware.OTPMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_prometheus.middleware.PrometheusAfterMiddleware",
]

ROOT_URLCONF = "jobsite.urls"
APPEND_SLASH = False  # jobsite.edge serves both spellings of a path instead of redirecting (a POST cannot follow)
CSRF_FAILURE_VIEW = "jobsite.errors.csrf_failure"
WSGI_APPLICATION = "jobsite.wsgi.application"
AUTH_USER_MODEL = "accounts.User"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# SQLite file by default so that the web server, the workers and the tests share one database.
DATABASE_URL = env_str("DATABASE_URL", f"sqlite:///{VAR_DIR / 'jobsite.sqlite3'}")
DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=60, conn_health_checks=True)}
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    DATABASES["default"]["ENGINE"] = "jobsite.postgresql"  # its health check costs no round trip
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Connections are kept too (CONN_MAX_AGE above): a new one per request or job cost ~1.5 ms of CPU (Django
    # registers its SQL functions on each). Concurrent writers (web + workers) wait for the lock, not fail at once.
    DATABASES["default"]["OPTIONS"] = {
        "timeout": 20,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / "test_jobsite.sqlite3")}

DATABASE_ROUTERS = ["jobsite.routers.TablelessModelsRouter"]
"""`manage.py dumpdata` without app labels skips django-rq's table-less dashboard model."""
DATABASE_POOLED = env_bool("DATABASE_POOLED", False)
"""DATABASE_URL points at a pooler in transaction mode (PgBouncer): no server-side cursors or prepared statements, they
outlive a transaction."""
DATABASES["default"]["DISABLE_SERVER_SIDE_CURSORS"] = DATABASE_POOLED
if DATABASES["default"]["ENGINE"] == "jobsite.postgresql":
    # Parameters bound by the server, and a statement run 5 times prepared: the hot path's statements (acceptance,
    # outcome, claim) are then neither parsed nor planned again, which took more server time than running them.
    # Not behind a transaction-mode pooler, where the next transaction may find another server connection.
    DATABASES["default"]["OPTIONS"] = {
        "server_side_binding": True,
        "prepare_threshold": None if DATABASE_POOLED else 5,
    }

REDIS_URL = env_str("REDIS_URL", "redis://127.0.0.1:6379/0")
REDIS_SOCKET_TIMEOUT = env_float("REDIS_SOCKET_TIMEOUT", 2.0, minimum=0.1)

# Django's cache (DRF's own throttles use it) is shared by all processes, so it lives in Redis too.
CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": "jobsite:cache",
        "OPTIONS": {"socket_timeout": REDIS_SOCKET_TIMEOUT, "socket_connect_timeout": REDIS_SOCKET_TIMEOUT},
    }
}

JOB_POOLS = env_pools("RQ_POOLS")
"""Worker pools {name: worker processes}: `jobs` (RQ_WORKERS, default one per core) plus those of RQ_POOLS
(`cpu:2,io:4`). Each is an RQ queue that kinds are routed to (KindSettings.pool); see jobs/pools.py."""
QUEUE_FAIRNESS = env_bool("QUEUE_FAIRNESS", True)
"""Round-robin between the owners with jobs waiting in a pool and priority; off: first come, first served."""
PRIORITY_WEIGHTS = env_weights("PRIORITY_WEIGHTS", {"high": 4, "normal": 2, "low": 1})
"""Shares of dispatches per priority when all have jobs waiting (smooth weighted round-robin): no starvation."""

# Every queue, the dashboard's too, is a PoolQueue: pools stage their jobs per priority and owner (jobs/pools.py);
# the others behave as plain RQ queues. One class for all: an RQ worker requires its queues to share one.
RQ_QUEUES = {
    name: {"URL": REDIS_URL, "DEFAULT_TIMEOUT": 600, "SOCKET_TIMEOUT": REDIS_SOCKET_TIMEOUT}
    for name in (*JOB_POOLS, "callbacks", "maintenance")
}
RQ = {"COMMIT_MODE": "auto", "QUEUE_CLASS": "jobs.pools.PoolQueue"}

# Reconciler: how often it runs and how long a job may look stuck before it is rescued.
RECONCILE_INTERVAL = env_int("RECONCILE_INTERVAL", 15, minimum=1)
RECONCILE_QUEUED_GRACE = env_int("RECONCILE_QUEUED_GRACE", 10, minimum=0)
RECONCILE_RUNNING_GRACE = env_int("RECONCILE_RUNNING_GRACE", 30, minimum=0)
JOB_MAX_ATTEMPTS = env_int("JOB_MAX_ATTEMPTS", 3, minimum=1)
UPLOAD_RETENTION = env_int("UPLOAD_RETENTION", 86400, minimum=60)
"""Seconds an upload (a batch's JSONL file) is kept for a batch to be made of it; the reconciler deletes it after."""

# Retention: final jobs expire after their kind's `retention`; the purge deletes them in bounded runs.
PURGE_INTERVAL = env_int("PURGE_INTERVAL", 300, minimum=1)
"""Seconds between two runs of the retention purge (rq cron)."""
PURGE_MAX_BATCHES = env_int("PURGE_MAX_BATCHES", 20, minimum=1)
"""Batches of 1000 rows one purge run deletes at most, per kind of row: a run stays short; the next carries on."""
TOMBSTONE_RETENTION_DAYS = env_int("TOMBSTONE_RETENTION_DAYS", 365, minimum=1)
"""Days a purged job's tombstone answers 410 job_expired; after that its URL answers 404 like any unknown id."""

CALLBACK_ALLOW_PRIVATE = env_bool("CALLBACK_ALLOW_PRIVATE", False)
"""Lets webhooks and `fetch` reach loopback and private (RFC 1918, ULA) addresses: local runs and tests only."""
OUTBOUND_ALLOWED_PORTS = env_ports("OUTBOUND_ALLOWED_PORTS", "80,443,1024-65535")
"""Ports webhooks and `fetch` may connect to (the SSRF guard), before OUTBOUND_DENIED_PORTS are taken out."""
OUTBOUND_DENIED_PORTS = env_ports(
    "OUTBOUND_DENIED_PORTS",
    "1080,1433,1521,2049,2181,2375,2376,2379,2380,3306,3389,4369,5432,5672,5900,5984,6379,6443,"
    "8500,9042,9092,9200,9300,10250,11211,15672,25672,27017",
)
"""Well-known service ports never reached from outside HTTP, even inside the allowed range: SOCKS, MSSQL,
Oracle, NFS, ZooKeeper, Docker, etcd, MySQL, RDP, epmd, PostgreSQL, AMQP, VNC, CouchDB, Redis, Kubernetes,
Consul, Cassandra, Kafka, Elasticsearch, kubelet, memcached, RabbitMQ, MongoDB."""
TRUSTED_PROXIES = env_list("TRUSTED_PROXIES")
ENCRYPTION_KEYS = env_list("ENCRYPTION_KEYS")
OTEL_EXPORTER = env_choice("OTEL_EXPORTER", "none", ("none", "console", "otlp"))
LOG_LEVEL = env_choice("LOG_LEVEL", "INFO", ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"))
LOG_FORMAT = env_choice("LOG_FORMAT", "json", ("json", "console"))

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "accounts.authentication.ApiKeyAuthentication",
        "accounts.authentication.OtpSessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "jobsite.api.ApiSchema",
    "EXCEPTION_HANDLER": "jobsite.errors.problem_exception_handler",
    # JSON only: a form or untyped body gets 415 naming application/json, never "field required".
    "DEFAULT_PARSER_CLASSES": ["jobsite.parsers.BoundedJSONParser"],
    "DEFAULT_RENDERER_CLASSES": [
        "rest_framework.renderers.JSONRenderer",
        "rest_framework.renderers.BrowsableAPIRenderer",
    ],
    # `?format=` belongs to the export endpoint (jsonl|csv), not to renderer selection.
    "URL_FORMAT_OVERRIDE": None,
    "UNAUTHENTICATED_USER": None,
}

SPECTACULAR_SETTINGS = {
    "TITLE": "Jobsite API",
    "DESCRIPTION": "Submit CPU-, I/O- and DB-heavy jobs, sync or async, governed by endpoint policies.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    "OAS_VERSION": "3.1.0",  # for `webhooks`
    "WEBHOOKS": [
        "jobs.schema.JOB_FINISHED",
        "jobs.schema.JOB_STARTED",
        "jobs.schema.JOB_PROGRESS",
        "jobs.schema.COMPAT_REQUEST_FINISHED",
        "jobs.schema.BATCH_COMPLETED",
    ],
    # One per kind: the discriminator of the submission union (a new kind adds its line; the schema test says so).
    "ENUM_NAME_OVERRIDES": {
        "HashKindEnum": ["hash"],
        "FetchKindEnum": ["fetch"],
        "StatsKindEnum": ["stats"],
        "DeliveryStatusEnum": ["pending", "delivered", "failed"],
        "PriorityEnum": "accounts.models.Priority",
        "WebhookEventEnum": "jobs.models.WebhookEvent.choices",
        # Three choice sets share the field name `status` (a job's, a webhook's, a batch's): named, not hashed.
        "JobStatusEnum": "jobs.models.JobStatus",
        "CallbackStatusEnum": "jobs.models.CallbackStatus",
        "BatchStatusEnum": "jobs.models.BatchStatus",
    },
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}

LOGGING = logging_config(LOG_LEVEL, LOG_FORMAT)

# The `fetch` kind: bounds on what one fetch may cost (per connect and per read; the kind's time_limit
# bounds the whole run: jobs.deadline).
FETCH_CONNECT_TIMEOUT = env_float("FETCH_CONNECT_TIMEOUT", 5.0, minimum=0.1)
FETCH_READ_TIMEOUT = env_float("FETCH_READ_TIMEOUT", 10.0, minimum=0.1)
FETCH_MAX_BYTES = env_int("FETCH_MAX_BYTES", 10 * 1024 * 1024, minimum=1)

HASH_MAX_ITERATIONS = env_int("HASH_MAX_ITERATIONS", 1_000_000, minimum=1)
"""Most iterations a `hash` job accepts (the schema publishes it); the fuzz test lowers it to keep its run short."""

# Webhook deliveries (the `callbacks` queue): bounds on one attempt and on the retries that follow.
CALLBACK_CONNECT_TIMEOUT = env_float("CALLBACK_CONNECT_TIMEOUT", 5.0, minimum=0.1)
CALLBACK_READ_TIMEOUT = env_float("CALLBACK_READ_TIMEOUT", 10.0, minimum=0.1)
CALLBACK_TOTAL_TIMEOUT = env_float("CALLBACK_TOTAL_TIMEOUT", 15.0, minimum=0.1)
"""Seconds one attempt may take in all (DNS, connect, headers, body), however slowly the receiver drips."""
CALLBACK_INLINE_TIMEOUT = env_float("CALLBACK_INLINE_TIMEOUT", 2.0, minimum=0.1)
"""Seconds the job worker's own first attempt may take before it is cut and carried on at once by a callbacks
worker (full deadline, no retry spent): a slow receiver never holds a job worker longer than this."""
CALLBACK_INTERRUPT_MARGIN = env_float("CALLBACK_INTERRUPT_MARGIN", 10.0, minimum=0.0)
"""Seconds past its deadline after which an attempt still in progress is taken as lost with its worker."""
CALLBACK_MAX_AGE = env_int("CALLBACK_MAX_AGE", 24 * 3600, minimum=0)
"""Seconds after a delivery starts (job final, or redelivery) past which no retry is scheduled."""
CALLBACK_MAX_PER_HOST = env_int("CALLBACK_MAX_PER_HOST", 2, minimum=1)
"""Attempts in flight to one receiver host at a time, across all callbacks workers; the rest wait their turn."""
CALLBACK_HOST_BUSY_DELAY = env_float("CALLBACK_HOST_BUSY_DELAY", 1.0, minimum=0.01)
"""Base seconds (jittered up to twice) an attempt to a busy host is deferred by, without counting as an attempt."""
CALLBACK_FREE_BUDGET = env_int("CALLBACK_FREE_BUDGET", 120, minimum=1)
"""Attempts per CALLBACK_FREE_BUDGET_WINDOW an owner gets for webhooks of jobs that cost nothing."""
CALLBACK_FREE_BUDGET_WINDOW = env_int("CALLBACK_FREE_BUDGET_WINDOW", 60, minimum=1)
CALLBACK_MAX_RESPONSE_BYTES = env_int("CALLBACK_MAX_RESPONSE_BYTES", 64 * 1024, minimum=0)
"""Bytes of a receiver's answer that are read; the rest is never downloaded."""
CALLBACK_RETRY_AFTER_MAX = env_int("CALLBACK_RETRY_AFTER_MAX", 3600, minimum=0)
"""Longest receiver-requested Retry-After honoured, in seconds."""
CALLBACK_RECONCILE_GRACE = env_int("CALLBACK_RECONCILE_GRACE", 120, minimum=0)
"""Seconds a pending delivery may show no progress before the reconciler enqueues it again."""
WEBHOOK_SECRET_ROTATION_WINDOW = env_int("WEBHOOK_SECRET_ROTATION_WINDOW", 24 * 3600, minimum=0)
"""Seconds a rotated-out signing secret keeps signing next to the new one."""
WEBHOOK_SECRETS_MAX_ACTIVE = env_int("WEBHOOK_SECRETS_MAX_ACTIVE", 2, minimum=2)
"""Signing secrets a user may have active at once (rotation needs two); a rotation retires the oldest beyond it."""

POLICY_CHECK_INTERVAL = env_float("POLICY_CHECK_INTERVAL", 0.5, minimum=0.0)
"""Seconds a process trusts its cached policies before it re-checks the version in Redis."""

SERVICE_UNAVAILABLE_RETRY_AFTER = env_int("SERVICE_UNAVAILABLE_RETRY_AFTER", 5, minimum=1)
"""Seconds a client told `service_unavailable` (Redis unreachable) should wait."""
QUEUE_FULL_RETRY_AFTER = env_int("QUEUE_FULL_RETRY_AFTER", 5, minimum=1)
"""Seconds a client told `queue_full` should wait."""
QUEUE_ADMISSION_DEPTH = env_int("QUEUE_ADMISSION_DEPTH", 0, minimum=0)
"""Set (> 0): the bound of every pool instead of its default (QUEUE_ADMISSION_DEPTHS)."""
QUEUE_ADMISSION_DEPTHS = {
    pool: QUEUE_ADMISSION_DEPTH or ADMISSION_PER_JOB_WORKER * size for pool, size in JOB_POOLS.items()
}
"""Per pool: async jobs waiting in it beyond which an acknowledgement waits for room (back-pressure),
ADMISSION_PER_JOB_WORKER (2) per worker of the pool by default: a job accepted under saturation waits behind at
most this many, so its time to callback does not grow with the backlog."""
QUEUE_ADMISSION_WAIT = env_float("QUEUE_ADMISSION_WAIT", 2.0, minimum=0.0)
"""Seconds an async acknowledgement waits for room below QUEUE_ADMISSION_DEPTH before answering 503 queue_full."""

API_KEY_PREFIX_BYTES = 6
"""Random bytes in a key's visible prefix (hex): enough to be unique, short enough to read."""
API_KEY_SECRET_BYTES = 32
"""Random bytes in a key's secret part: 256 bits, so a fast keyed hash suffices to store it."""
API_KEY_TOUCH_INTERVAL = timedelta(seconds=env_int("API_KEY_TOUCH_INTERVAL", 60, minimum=1))
"""A key's last_used_at is written at most this often."""

OTP_TOTP_ISSUER = env_str("OTP_TOTP_ISSUER", "Jobsite")
OTP_TOTP_THROTTLE_FACTOR = env_int("OTP_TOTP_THROTTLE_FACTOR", 1, minimum=0)
"""django-otp: after n failed codes a device refuses codes for factor * 2**(n-1) seconds; 0 turns it off."""
JWT_ACCESS_LIFETIME = env_int("JWT_ACCESS_LIFETIME", 300, minimum=1)
"""Seconds a bearer token minted at POST /api/v1/auth/token/ lives (it dies sooner with its API key)."""
SIMPLE_JWT = {
    "ACCESS_TOKEN_LIFETIME": timedelta(seconds=JWT_ACCESS_LIFETIME),
    "SIGNING_KEY": hashlib.sha256(b"jobsite:jwt:" + SECRET_KEY.encode()).hexdigest(),
}
"""djangorestframework-simplejwt: HS256 access tokens (accounts.tokens) under a 256-bit key derived from SECRET_KEY."""

LOGIN_RATE = env_str("LOGIN_RATE", "10/5m")
"""django-ratelimit rate of sign-in attempts (admin and /api-auth/login/), per account and per client IP."""
MFA_FAILURE_RATE = env_str("MFA_FAILURE_RATE", "5/5m")
"""Wrong X-MFA-Code answers allowed per (API key or session user, client IP) before 429."""
MFA_FAILURE_RATE_PER_IP = env_str("MFA_FAILURE_RATE_PER_IP", "20/5m")
"""Wrong X-MFA-Code answers allowed per client IP, whatever the credential, before 429."""
RATELIMIT_IP_META_KEY = "jobsite.client_ip.client_ip"
"""django-ratelimit reads the client address as everything else does (trusted proxies only)."""
RATELIMIT_USE_CACHE = "default"
"""django-ratelimit counts in the shared Redis cache (Django's RedisCache increments atomically)."""

NEW_USER_CREDITS = env_int("NEW_USER_CREDITS", 1000, minimum=0)
"""Credits granted once to every new user (0: none; staff grant them with grant_credits or the admin)."""

RATELIMIT_FAIL_OPEN_READS = env_bool("RATELIMIT_FAIL_OPEN_READS", True)
"""With Redis unreachable, endpoints that create no jobs skip rate limiting (job creation always fails closed)."""

ANONYMOUS_BUDGET = env_int("ANONYMOUS_BUDGET", 1200, minimum=0)
"""Requests all anonymous callers together may make per ANONYMOUS_BUDGET_WINDOW (0: none), on top of each
policy's per-IP limit; authenticated callers never count against it, so anonymous traffic cannot starve them."""
ANONYMOUS_BUDGET_WINDOW = env_int("ANONYMOUS_BUDGET_WINDOW", 60, minimum=1)
"""Seconds of the anonymous budget's fixed window."""

CONCURRENCY_CAP_RETRY_AFTER = env_int("CONCURRENCY_CAP_RETRY_AFTER", 1, minimum=1)
"""Seconds a client refused by a concurrency cap is told to wait."""

IDEMPOTENCY_LOCK_TIMEOUT = env_int("IDEMPOTENCY_LOCK_TIMEOUT", 60, minimum=1)
"""Seconds an in-flight request that created no job holds its key (gunicorn's request timeout): after that its
process is taken for dead and a retry takes the key over. Once the request created a job, the job answers."""

# Held requests (issue 19): a submission held for its job (`Prefer: wait`) and job event streams (SSE) each keep a
# gunicorn thread, so both are bounded per process and in time.
HELD_REQUESTS_PER_PROCESS = env_int(
    "HELD_REQUESTS_PER_PROCESS", max(1, env_int("GUNICORN_THREADS", 8, minimum=1) // 2), minimum=0
)
"""Requests one web process holds at once (Prefer waits and event streams together); the other threads stay free
for the rest. Beyond it a wait answers 202 at once and a stream 503."""
STREAM_MAX_SECONDS = env_float("STREAM_MAX_SECONDS", 25.0, minimum=1.0)
"""Seconds one event stream lives; it then ends with a `retry:` hint and EventSource resumes with Last-Event-ID."""
STREAM_HEARTBEAT_SECONDS = env_float("STREAM_HEARTBEAT_SECONDS", 10.0, minimum=0.1)
"""Seconds without an event after which a stream sends a `: keep-alive` comment (proxies close idle connections)."""
STREAM_RETRY_MS = env_int("STREAM_RETRY_MS", 1000, minimum=0)
"""The `retry:` an ended stream sends: milliseconds EventSource waits before it reconnects."""
JOB_EVENTS_TTL = env_int("JOB_EVENTS_TTL", 3600, minimum=60)
"""Seconds a job's event stream stays in Redis after its last event: the window in which Last-Event-ID resumes."""
PROGRESS_MIN_INTERVAL = env_float("PROGRESS_MIN_INTERVAL", 0.5, minimum=0.0)
"""Seconds between two recorded progress reports of one run (runs shorter than this record none)."""
PROGRESS_MIN_STEP = env_float("PROGRESS_MIN_STEP", 0.05, minimum=0.0)
"""Fraction a report must have advanced since the last recorded one (reports without a fraction: time only)."""
