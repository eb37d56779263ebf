"""bench/bare_reference.py: the bare view it measures does its work (validate, hash, one row), and its table."""

import pytest
from django.test import Client

from bench import bare_urls
from bench.bare_reference import format_table
from jobs.kinds.hash import compute_hash
from jobs.models import Job

pytestmark = pytest.mark.django_db


@pytest.fixture
def bare_client(settings, django_user_model) -> Client:
    settings.ROOT_URLCONF = "bench.bare_urls"
    django_user_model.objects.create_user("bare-owner")
    bare_urls._owner_id.cache_clear()  # the pk of this test's user, not of an earlier test's
    return Client()


def test_the_bare_view_hashes_and_records_one_row(bare_client):
    response = bare_client.post("/sync", {"data": "bare", "iterations": 10}, content_type="application/json")

    assert response.status_code == 200
    assert response.json() == {"status": "success", "result": compute_hash("bare", 10)}
    job = Job.objects.get(endpoint="bare.sync")
    assert (job.kind, job.status, job.result) == ("hash", "succeeded", compute_hash("bare", 10))


def test_the_bare_view_refuses_what_the_kind_refuses(bare_client):
    response = bare_client.post("/sync", {"data": " ", "iterations": 0}, content_type="application/json")

    assert response.status_code == 400
    assert not Job.objects.exists()


def test_the_table_gives_ranges_and_the_three_ratios_of_the_medians():
    def run(throughput: float, cpu: float) -> dict[str, float]:
        return {"throughput": throughput, "latency_p50_ms": 10, "latency_p99_ms": 20, "server_cpu_ms": cpu, "failed": 0}

    rounds = [
        {"original": run(100, 6), "bare": run(250, 3), "jobsite": run(150, 5)},
        {"original": run(100, 6), "bare": run(270, 3), "jobsite": run(170, 5)},
    ]

    table = format_table(rounds).splitlines()

    assert table[2] == "| throughput (req/s) | 100 | 250-270 | 150-170 | 2.60x | 1.60x | 0.62x |"
    assert table[5] == "| server CPU per request (ms) | 6 | 3 | 5 | 0.50x | 0.83x | 1.67x |"
    assert table[6] == "| failed requests | 0 | 0 | 0 | - | - | - |"
