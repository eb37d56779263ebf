"""The credit ledger: one account per user, and append-only entries that explain every change of it."""

import uuid

from django.conf import settings
from django.db import models

BALANCE_NOT_NEGATIVE = "credit_balance_not_negative"
"""The CHECK constraint that keeps every balance >= 0: a statement spending more than there is fails on it."""


class CreditAccount(models.Model):
    """A user's balance; only credits.services changes it, always together with a ledger entry."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, primary_key=True, related_name="credit_account"
    )
    balance = models.BigIntegerField(default=0)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [models.CheckConstraint(condition=models.Q(balance__gte=0), name=BALANCE_NOT_NEGATIVE)]

    def __str__(self) -> str:
        return f"{self.user} ({self.balance})"


class EntryType(models.TextChoices):
    GRANT = "grant"
    CHARGE = "charge"
    REFUND = "refund"
    ADJUSTMENT = "adjustment"


class LedgerEntry(models.Model):
    """One posting; never updated nor deleted, so the sum of an account's entries is its balance."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)  # API.md: ids are UUIDs
    # No index of its own: ledger_account_created (account, -created_at, -id) serves every lookup by account.
    account = models.ForeignKey(CreditAccount, on_delete=models.CASCADE, related_name="entries", db_index=False)
    type = models.CharField(max_length=16, choices=EntryType.choices)
    amount = models.BigIntegerField(help_text="Signed: + adds, - spends.")
    balance_after = models.BigIntegerField()
    reason = models.CharField(max_length=255, blank=True)
    # Not a foreign key: dependencies point jobs -> credits, never back.
    job_id = models.UUIDField(null=True, blank=True, db_index=True)
    posting_key = models.CharField(max_length=128, unique=True, help_text="A posting with this key happens once.")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name_plural = "ledger entries"
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["account", "-created_at", "-id"], name="ledger_account_created"),
            models.Index(fields=["created_at", "id"], name="ledger_created_id"),  # the admin list's ordering
        ]

    def __str__(self) -> str:
        return f"{self.type} {self.amount:+d} -> {self.balance_after}"
