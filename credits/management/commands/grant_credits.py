from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from accounts.models import User
from credits.selectors import credit_balance
from credits.services import credit_grant
from jobsite.errors import ServiceError


class Command(BaseCommand):
    help = "Grant credits to a user (a ledger entry of type grant)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("user", help="Username.")
        parser.add_argument("amount", type=int, help="Credits to add (positive).")
        parser.add_argument("--reason", default="granted with manage.py grant_credits")

    def handle(self, *args: Any, user: str, amount: int, reason: str, **options: Any) -> None:
        target = User.objects.filter(username=user).first()
        if target is None:
            raise CommandError(f"no user {user!r}")
        try:
            credit_grant(user=target, amount=amount, reason=reason)
        except ServiceError as exc:
            raise CommandError(str(exc.extra.get("errors") or exc.detail)) from None
        self.stdout.write(f"granted {amount} to {user}; balance {credit_balance(user=target)}")
