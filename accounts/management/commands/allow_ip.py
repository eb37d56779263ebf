from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from accounts.management.commands._common import get_api_key, get_user, service_errors
from accounts.services import ip_allow_entry_create


class Command(BaseCommand):
    help = "Add an IP allowlist entry (IPv4 or IPv6 CIDR) for a user, an API key, or (neither) everyone."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("cidr")
        parser.add_argument("--user", dest="username")
        parser.add_argument("--key", dest="prefix", help="API key prefix")

    def handle(self, *args: Any, cidr: str, username: str | None, prefix: str | None, **options: Any) -> None:
        if username and prefix:
            raise CommandError("an entry belongs to a user or to a key, not both")
        user = get_user(username) if username else None
        api_key = get_api_key(prefix) if prefix else None
        with service_errors():
            entry = ip_allow_entry_create(cidr=cidr, user=user, api_key=api_key)
        self.stdout.write(f"allowed {entry}")
