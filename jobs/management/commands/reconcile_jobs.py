from typing import Any

from django.core.management.base import BaseCommand

from jobs.tasks import reconcile


class Command(BaseCommand):
    help = "Re-enqueue or fail jobs that a flushed Redis or a dead worker left behind (rq cron runs this too)."

    def handle(self, *args: Any, **options: Any) -> None:
        report = reconcile()
        self.stdout.write(
            f"requeued {report['requeued']}, failed {report['failed']}, "
            f"held jobs released {report['released']}, dependency_failed {report['dependency_failed']}, "
            f"webhooks requeued {report['callbacks_requeued']}"
        )
