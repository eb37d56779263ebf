from datetime import timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from django.utils import timezone

from jobs.services import jobs_purge


class Command(BaseCommand):
    help = "Delete finished jobs older than --older-than days (queued and running jobs are kept)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--older-than", type=int, default=30, metavar="DAYS")

    def handle(self, *args: Any, older_than: int, **options: Any) -> None:
        if older_than < 0:
            self.stderr.write("--older-than must be >= 0")
            raise SystemExit(2)
        deleted = jobs_purge(finished_before=timezone.now() - timedelta(days=older_than))
        self.stdout.write(f"deleted {deleted} job(s)")
