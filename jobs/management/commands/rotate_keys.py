from typing import Any

from django.core.management.base import BaseCommand

from jobs.encryption import jobs_rotate_keys, upload_chunks_rotate_keys, webhook_secrets_rotate_keys


class Command(BaseCommand):
    help = (
        "Re-encrypt every encrypted job field, webhook secret and upload chunk under the newest key of ENCRYPTION_KEYS."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        self.stdout.write(
            f"re-encrypted {jobs_rotate_keys()} job(s), {webhook_secrets_rotate_keys()} webhook secret(s), "
            f"{upload_chunks_rotate_keys()} upload chunk(s)"
        )
