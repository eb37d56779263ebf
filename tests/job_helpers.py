"""Helpers for tests of jobs and credits: kind settings rows, the ledger invariant, the hash kind's output."""

import hashlib

from accounts.models import User
from credits.selectors import credit_balance, ledger_sum
from credits.services import credit_adjust
from jobs.kind_settings import kind_defaults
from jobs.models import KindSettings


def kind_settings(kind: str, **fields: object) -> None:
    """Store a kind's settings row: its defaults (tests flush the seeded rows) with these fields changed."""
    KindSettings.objects.update_or_create(kind=kind, defaults={**kind_defaults(kind), **fields})


def assert_ledger_explains_balance(user: User) -> None:
    assert ledger_sum(user=user) == credit_balance(user=user) >= 0


def set_balance(user: User, balance: int) -> None:
    """Adjust the user's balance to exactly `balance` (one ledger entry)."""
    delta = balance - credit_balance(user=user)
    if delta:
        credit_adjust(user=user, amount=delta, reason="test setup")


def hash_output(data: str, iterations: int) -> str:
    """The hash kind's output (API.md), computed here independently of the service."""
    h = hashlib.sha256(data.encode()).hexdigest()
    for i in range(iterations):
        h = hashlib.sha256(f"{h}:{i}".encode()).hexdigest()
    return h
