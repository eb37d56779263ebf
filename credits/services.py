"""Writes of credits: every balance change is one conditional UPDATE plus its ledger entry, in one transaction."""

import uuid
from uuid import UUID

from django.db import IntegrityError, transaction
from django.db.models import F

from accounts.models import User
from credits.models import CreditAccount, EntryType, LedgerEntry
from jobsite.errors import InsufficientCredits, InvalidInput


def charge_key(job_id: UUID | str) -> str:
    return f"charge:{job_id}"


def refund_key(job_id: UUID | str) -> str:
    return f"refund:{job_id}"


def _post(
    *,
    user_id: int,
    type: str,
    amount: int,
    posting_key: str,
    reason: str = "",
    job_id: UUID | str | None = None,
    created_by: User | None = None,
) -> LedgerEntry | None:
    """Apply `amount` to the balance and record it; a replayed posting key writes nothing (returns None)."""
    try:
        with transaction.atomic():
            if LedgerEntry.objects.filter(posting_key=posting_key).exists():
                return None
            CreditAccount.objects.get_or_create(user_id=user_id)
            accounts = CreditAccount.objects.filter(user_id=user_id)
            if amount < 0:
                # The one conditional update: the balance can only go below zero by losing this race.
                accounts = accounts.filter(balance__gte=-amount)
            if not accounts.update(balance=F("balance") + amount):
                balance = CreditAccount.objects.get(user_id=user_id).balance
                raise InsufficientCredits(balance=balance, cost=-amount)
            # Our UPDATE holds the row until commit, so this read is the balance we produced.
            balance_after = CreditAccount.objects.get(user_id=user_id).balance
            return LedgerEntry.objects.create(
                account_id=user_id,
                type=type,
                amount=amount,
                balance_after=balance_after,
                reason=reason[:255],
                job_id=job_id,
                posting_key=posting_key,
                created_by=created_by,
            )
    except IntegrityError:
        # A concurrent posting with the same key won; ours rolled back whole.
        if LedgerEntry.objects.filter(posting_key=posting_key).exists():
            return None
        raise


def _require_nonzero(amount: int) -> None:
    if amount == 0:
        raise InvalidInput([{"field": "amount", "message": "Must not be zero."}])


def credit_grant(
    *, user: User, amount: int, reason: str, created_by: User | None = None, posting_key: str = ""
) -> LedgerEntry | None:
    """Add credits (staff grants, new-user credits)."""
    if amount <= 0:
        raise InvalidInput([{"field": "amount", "message": "A grant must be positive."}])
    return _post(
        user_id=user.pk,
        type=EntryType.GRANT,
        amount=amount,
        reason=reason,
        created_by=created_by,
        posting_key=posting_key or f"grant:{uuid.uuid4()}",
    )


def credit_adjust(
    *, user: User, amount: int, reason: str, created_by: User | None = None, posting_key: str = ""
) -> LedgerEntry | None:
    """Correct a balance either way; it cannot go below zero (402 insufficient_credits)."""
    _require_nonzero(amount)
    return _post(
        user_id=user.pk,
        type=EntryType.ADJUSTMENT,
        amount=amount,
        reason=reason,
        created_by=created_by,
        posting_key=posting_key or f"adjustment:{uuid.uuid4()}",
    )


def credit_charge(*, user_id: int, amount: int, job_id: UUID | str, reason: str = "") -> LedgerEntry | None:
    """Spend `amount` for a job, once per job; raises InsufficientCredits and writes nothing if short."""
    if amount == 0:
        return None
    return _post(
        user_id=user_id,
        type=EntryType.CHARGE,
        amount=-amount,
        reason=reason,
        job_id=job_id,
        posting_key=charge_key(job_id),
    )


def credit_refund(*, job_id: UUID | str, reason: str) -> LedgerEntry | None:
    """Give back in full what a job was charged, once; a job that was never charged gets nothing."""
    charge = LedgerEntry.objects.filter(posting_key=charge_key(job_id)).first()
    if charge is None:
        return None
    return _post(
        user_id=charge.account_id,
        type=EntryType.REFUND,
        amount=-charge.amount,
        reason=reason,
        job_id=job_id,
        posting_key=refund_key(job_id),
    )
