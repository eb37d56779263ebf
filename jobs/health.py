"""GET /healthz: database, Redis, queue depths and live workers, answered within a short timeout."""

from typing import Any

from django.db import connection
from django.db.utils import DatabaseError
from django.http import HttpRequest, JsonResponse
from redis.exceptions import RedisError
from rq import Worker

from accounts.endpoints import Endpoint
from accounts.policies import get_endpoint_policy
from jobs import queues

DEGRADED_QUEUE_RATIO = 0.9
"""A queue fuller than this share of its capacity makes the service `degraded`."""


def _database_ok() -> bool:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        return True
    except DatabaseError:
        return False


def health_report() -> tuple[int, dict[str, Any]]:
    database_ok = _database_ok()
    report: dict[str, Any] = {"database_ok": database_ok, "redis_ok": False, "queue_size": None, "queues": {}}
    report["queue_capacity"] = get_endpoint_policy(Endpoint.JOBS_ASYNC).queue_max_depth if database_ok else None
    report["active_workers"] = 0
    try:
        connection_ = queues.get_queue(queues.JOBS_QUEUE).connection
        connection_.ping()
        report["queues"] = {name: queues.queue_depth(name) for name in queues.all_queues()}
        report["queue_size"] = sum(report["queues"][name] for name in queues.job_queues())
        report["active_workers"] = Worker.count(connection=connection_)
        report["redis_ok"] = True
    except RedisError:
        pass
    if not (database_ok and report["redis_ok"]):
        return 503, {"status": "unhealthy", **report}
    capacity = report["queue_capacity"]
    degraded = report["active_workers"] == 0 or (capacity and report["queue_size"] > DEGRADED_QUEUE_RATIO * capacity)
    return 200, {"status": "degraded" if degraded else "healthy", **report}


def healthz(request: HttpRequest) -> JsonResponse:
    status, body = health_report()
    return JsonResponse(body, status=status)
