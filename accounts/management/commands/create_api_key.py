from datetime import timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from accounts.management.commands._common import get_user, service_errors
from accounts.models import SCOPES, split_list
from accounts.services import api_key_create


class Command(BaseCommand):
    help = "Create an API key for a user; the key is printed once, alone on the last line."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")
        parser.add_argument("--scopes", default=",".join(SCOPES), help=f"comma list (default all: {','.join(SCOPES)})")
        parser.add_argument("--expires", type=int, metavar="DAYS", help="days until the key expires (default never)")
        parser.add_argument("--name", default="", help="a label for the key")

    def handle(self, *args: Any, username: str, scopes: str, expires: int | None, name: str, **options: Any) -> None:
        if expires is not None and expires < 1:
            raise CommandError("--expires must be at least 1 day")
        expires_at = timezone.now() + timedelta(days=expires) if expires else None
        with service_errors():
            key, raw_key = api_key_create(
                owner=get_user(username), name=name, scopes=split_list(scopes), expires_at=expires_at
            )
        until = key.expires_at.isoformat() if key.expires_at else "never"
        self.stderr.write(f"API key {key.prefix} for {username}, scopes {key.scopes or '(none)'}, expires {until}.")
        self.stderr.write("Store it now: it cannot be shown again.")
        self.stdout.write(raw_key)
