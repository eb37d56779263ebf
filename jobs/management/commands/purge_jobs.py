from datetime import timedelta
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser
from django.utils import timezone

from jobs.services import PURGE_BATCH, jobs_purge_expired, jobs_purge_finished_before


class Command(BaseCommand):
    help = (
        "Run the retention purge now (rq cron runs it every PURGE_INTERVAL): expired jobs with their webhook "
        "attempts and idempotency records (each leaves a tombstone: its URL answers 410), expired idempotency "
        "keys, old tombstones. --older-than DAYS also deletes final jobs finished before that, expired or not. "
        "Batches of --batch-size rows, each its own transaction, at most --max-batches per kind of row: an "
        "interrupted run keeps what it deleted; run it again to carry on."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--older-than", type=int, default=None, metavar="DAYS")
        parser.add_argument("--batch-size", type=int, default=PURGE_BATCH, metavar="ROWS")
        parser.add_argument("--max-batches", type=int, default=settings.PURGE_MAX_BATCHES, metavar="N")

    def handle(self, *args: Any, older_than: int | None, batch_size: int, max_batches: int, **options: Any) -> None:
        if batch_size < 1 or max_batches < 1 or (older_than is not None and older_than < 0):
            self.stderr.write("--batch-size and --max-batches must be >= 1, --older-than >= 0")
            raise SystemExit(2)
        report = {}
        if older_than is not None:
            cutoff = timezone.now() - timedelta(days=older_than)
            report["finished_jobs_purged"] = jobs_purge_finished_before(
                finished_before=cutoff, batch_size=batch_size, max_batches=max_batches
            )
        report.update(jobs_purge_expired(batch_size=batch_size, max_batches=max_batches))
        self.stdout.write(", ".join(f"{name}: {count}" for name, count in report.items()))
