from datetime import timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from django.utils import timezone

from jobs.services import PURGE_BATCH, jobs_purge


class Command(BaseCommand):
    help = (
        "Delete finished jobs older than --older-than days (queued and running jobs are kept), in batches of "
        "--batch-size, each its own transaction: progress is logged per batch, and an interrupted run keeps "
        "what it deleted (run it again to finish)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--older-than", type=int, default=30, metavar="DAYS")
        parser.add_argument("--batch-size", type=int, default=PURGE_BATCH, metavar="JOBS")

    def handle(self, *args: Any, older_than: int, batch_size: int, **options: Any) -> None:
        if older_than < 0 or batch_size < 1:
            self.stderr.write("--older-than must be >= 0 and --batch-size >= 1")
            raise SystemExit(2)
        cutoff = timezone.now() - timedelta(days=older_than)
        deleted = jobs_purge(finished_before=cutoff, batch_size=batch_size)
        self.stdout.write(f"deleted {deleted} job(s)")
