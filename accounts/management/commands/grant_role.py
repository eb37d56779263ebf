from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from accounts.management.commands._common import get_user, service_errors
from accounts.services import role_grant


class Command(BaseCommand):
    help = "Give a user a role (created if it does not exist yet)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")
        parser.add_argument("role")

    def handle(self, *args: Any, username: str, role: str, **options: Any) -> None:
        with service_errors():
            granted = role_grant(user=get_user(username), role_name=role)
        self.stdout.write(f"{username} has role {granted.name}")
