import time

import httpx
import pytest
from django.test import Client

from jobsite.process_cache import settings_cache
from tests.processes import free_port

pytestmark = pytest.mark.django_db


def test_healthz_reports_database_redis_and_queues(client: Client) -> None:
    response = client.get("/healthz")
    body = response.json()
    assert response.status_code == 200
    assert body["database_ok"] and body["redis_ok"]
    assert body["status"] == "degraded"  # no worker is alive in this test
    assert set(body["queues"]) == {"jobs", "callbacks", "maintenance"}
    assert body["queue_capacity"] == 10000 and body["queue_size"] == 0


def test_healthz_is_503_fast_when_redis_is_down(client: Client, settings) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    settings.RQ_QUEUES = {name: {**conf, "URL": dead} for name, conf in settings.RQ_QUEUES.items()}
    started = time.monotonic()
    response = client.get("/healthz")
    assert time.monotonic() - started < 5
    assert response.status_code == 503
    assert response.json()["status"] == "unhealthy" and response.json()["redis_ok"] is False
    settings_cache.changed()


@pytest.mark.slow
def test_healthz_over_http(server_url: str) -> None:
    assert httpx.get(f"{server_url}/healthz").json()["database_ok"] is True
