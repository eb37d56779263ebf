from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

from jobs.services import PURGE_BATCH, jobs_purge_expired


class Command(BaseCommand):
    help = (
        "Run the retention purge now (rq cron runs it every PURGE_INTERVAL): expired jobs with their webhook "
        "attempts and idempotency records (each leaves a tombstone: its URL answers 410), expired idempotency "
        "keys, old tombstones. Batches of --batch-size rows, each its own transaction, at most --max-batches "
        "per kind of row: an interrupted run keeps what it deleted; run it again to carry on."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--batch-size", type=int, default=PURGE_BATCH, metavar="ROWS")
        parser.add_argument("--max-batches", type=int, default=settings.PURGE_MAX_BATCHES, metavar="N")

    def handle(self, *args: Any, batch_size: int, max_batches: int, **options: Any) -> None:
        if batch_size < 1 or max_batches < 1:
            self.stderr.write("--batch-size and --max-batches must be >= 1")
            raise SystemExit(2)
        report = jobs_purge_expired(batch_size=batch_size, max_batches=max_batches)
        self.stdout.write(", ".join(f"{name}: {count}" for name, count in report.items()))
