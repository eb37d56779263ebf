"""Reads of credits: a user without an account has a balance of 0."""

from django.db.models import QuerySet, Sum

from accounts.models import User
from credits.models import CreditAccount, LedgerEntry


def credit_balance(*, user: User) -> int:
    return CreditAccount.objects.filter(user=user).values_list("balance", flat=True).first() or 0


def ledger_list(*, user: User) -> QuerySet[LedgerEntry]:
    """The user's own entries, newest first."""
    return LedgerEntry.objects.filter(account_id=user.pk)


def ledger_sum(*, user: User) -> int:
    return ledger_list(user=user).aggregate(total=Sum("amount"))["total"] or 0
