from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from accounts.management.commands._common import service_errors
from accounts.services import api_key_revoke


class Command(BaseCommand):
    help = "Revoke an API key by its prefix; it stops working at once."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("prefix")

    def handle(self, *args: Any, prefix: str, **options: Any) -> None:
        with service_errors():
            key = api_key_revoke(prefix=prefix)
        assert key.revoked_at is not None  # api_key_revoke sets it
        self.stdout.write(f"revoked {key.prefix} (owner {key.owner}) at {key.revoked_at.isoformat()}")
