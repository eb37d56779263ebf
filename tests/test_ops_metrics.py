"""The gauges operators page on: live workers per queue, the reconciler's last run, credit accounts out of balance."""

import time

import pytest
from django.db.models import F
from prometheus_client.parser import text_string_to_metric_families
from rest_framework.test import APIClient
from rq import SimpleWorker

from accounts.models import User
from credits.models import CreditAccount
from jobs import queues, tasks
from jobsite.redis import get_redis


def scrape() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = APIClient().get("/metrics").content.decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


@pytest.mark.django_db
def test_live_workers_are_counted_per_queue() -> None:
    assert scrape()[("jobsite_workers", (("queue", "jobs"),))] == 0
    worker = SimpleWorker(
        [queues.get_queue(queues.JOBS_QUEUE), queues.get_queue(queues.MAINTENANCE_QUEUE)], connection=get_redis()
    )
    worker.register_birth()
    try:
        metrics = scrape()
        assert metrics[("jobsite_workers", (("queue", "jobs"),))] == 1
        assert metrics[("jobsite_workers", (("queue", "maintenance"),))] == 1
        assert metrics[("jobsite_workers", (("queue", "callbacks"),))] == 0
    finally:
        worker.register_death()
    assert scrape()[("jobsite_workers", (("queue", "jobs"),))] == 0


@pytest.mark.django_db
def test_the_reconciler_leaves_its_last_run_time() -> None:
    assert not any(name == "jobsite_reconciler_last_run_timestamp_seconds" for name, _ in scrape())
    before = time.time()
    tasks.reconcile()
    assert before <= scrape()[("jobsite_reconciler_last_run_timestamp_seconds", ())] <= time.time()


@pytest.mark.django_db
def test_ledger_check_counts_accounts_whose_balance_left_the_ledger(user: User, other_user: User) -> None:
    assert CreditAccount.objects.filter(user=user).exists()  # NEW_USER_CREDITS granted through the ledger
    assert tasks.check_ledger() == 0
    assert scrape()[("jobsite_credit_accounts_out_of_balance", ())] == 0
    CreditAccount.objects.filter(user=user).update(balance=F("balance") + 5)  # money outside credits.services
    assert tasks.check_ledger() == 1
    assert scrape()[("jobsite_credit_accounts_out_of_balance", ())] == 1
