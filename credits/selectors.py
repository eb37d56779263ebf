"""Reads of credits: a user without an account has a balance of 0."""

from django.db.models import F, OuterRef, QuerySet, Subquery, Sum
from django.db.models.functions import Coalesce

from accounts.models import User
from credits.models import CreditAccount, LedgerEntry


def credit_balance(*, user: User) -> int:
    return CreditAccount.objects.filter(user=user).values_list("balance", flat=True).first() or 0


def ledger_list(*, user: User) -> QuerySet[LedgerEntry]:
    """The user's own entries, newest first."""
    return LedgerEntry.objects.filter(account_id=user.pk)


def ledger_sum(*, user: User) -> int:
    return ledger_list(user=user).aggregate(total=Sum("amount"))["total"] or 0


def credit_accounts_out_of_balance() -> int:
    """Accounts whose balance is not the sum of their ledger entries: 0 unless money moved outside the ledger."""
    ledger_total = (
        LedgerEntry.objects.filter(account=OuterRef("pk")).order_by().values("account").annotate(total=Sum("amount"))
    )
    return (
        CreditAccount.objects.annotate(ledger_total=Coalesce(Subquery(ledger_total.values("total")), 0))
        .exclude(balance=F("ledger_total"))
        .count()
    )
