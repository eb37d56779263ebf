from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from accounts.management.commands._common import get_user, service_errors
from accounts.services import role_revoke


class Command(BaseCommand):
    help = "Take a role away from a user."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")
        parser.add_argument("role")

    def handle(self, *args: Any, username: str, role: str, **options: Any) -> None:
        with service_errors():
            role_revoke(user=get_user(username), role_name=role)
        self.stdout.write(f"{username} no longer has role {role}")
