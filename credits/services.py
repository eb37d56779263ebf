"""Writes of credits: every balance change is one conditional UPDATE plus its ledger entry, in one transaction."""

import functools
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from uuid import UUID

from django.db import connection, transaction

from accounts.models import User
from credits.models import CreditAccount, EntryType, LedgerEntry
from jobsite.db import insert_many_unless_conflict, insert_unless_conflict, insert_values, quoted_column
from jobsite.errors import InsufficientCredits, InvalidInput

if TYPE_CHECKING:
    from django.db.models.fields import Field

REASON_MAX_LENGTH = LedgerEntry._meta.get_field("reason").max_length
"""A ledger entry's reason is cut to its column (job kinds and error codes can make it long)."""


def charge_key(job_id: UUID | str) -> str:
    return f"charge:{job_id}"


def refund_key(job_id: UUID | str) -> str:
    return f"refund:{job_id}"


_ACCOUNTS = CreditAccount._meta.db_table
_LEDGER = LedgerEntry._meta.db_table


def _move_balance(*, user_id: int, amount: int) -> int | None:
    """One UPDATE ... RETURNING: the balance after adding `amount`, or None if the account is missing or
    (spending) short. The condition is the one guard: the balance can only go below zero by losing this race."""
    sql, params = f"UPDATE {_ACCOUNTS} SET balance = balance + %s WHERE user_id = %s", [amount, user_id]
    if amount < 0:
        sql, params = f"{sql} AND balance >= %s", [*params, -amount]
    with connection.cursor() as cursor:
        cursor.execute(f"{sql} RETURNING balance", params)
        row = cursor.fetchone()
    return None if row is None else row[0]


def _apply(entry: LedgerEntry) -> tuple[int | None, bool]:
    """Move the balance by the entry's amount and record the entry unless its posting key was used: the balance
    after (None: no account, or short) and whether the entry was written."""
    if connection.vendor == "postgresql":
        sql, fields = _apply_statement()
        with connection.cursor() as cursor:
            cursor.execute(sql, [entry.amount, entry.account_id, entry.amount, *insert_values(entry, fields)])
            balance, written = cursor.fetchone()
        if written:
            entry.balance_after, entry._state.adding = balance, False
        return balance, written
    balance = _move_balance(user_id=entry.account_id, amount=entry.amount)
    if balance is None:
        return None, False
    entry.balance_after = balance
    return balance, insert_unless_conflict(entry, unique_fields=["posting_key"])


@functools.cache
def _apply_statement() -> tuple[str, list["Field[Any, Any]"]]:
    """PostgreSQL: the balance's conditional UPDATE and the entry's INSERT in one data-modifying statement (one round
    trip where _move_balance and insert_unless_conflict take two); the CHECK keeps a balance >= 0, so the condition
    `balance + amount >= 0` only ever refuses a spend. Parameters: amount, user id, amount, then `fields`' values."""
    written, fields = _entry_written_after("moved")
    sql = (
        f"WITH moved AS (UPDATE {_ACCOUNTS} SET balance = balance + %s WHERE user_id = %s AND balance + %s >= 0"
        f" RETURNING balance), written AS ({written} ON CONFLICT (posting_key) DO NOTHING RETURNING 1)"
        " SELECT (SELECT balance FROM moved), EXISTS (SELECT FROM written)"
    )
    return sql, fields


def _entry_written_after(moved: str) -> tuple[str, list["Field[Any, Any]"]]:
    """PostgreSQL: the INSERT of an entry whose balance_after is the balance the data-modifying CTE `moved` returned
    (nothing if it returned no row); parameters: insert_values(entry, fields)."""
    fields = [field for field in LedgerEntry._meta.concrete_fields if field.attname != "balance_after"]
    columns = ", ".join(quoted_column(field) for field in fields)
    sql = (
        f"INSERT INTO {_LEDGER} ({columns}, balance_after)"
        f" SELECT {', '.join(['%s'] * len(fields))}, {moved}.balance FROM {moved}"
    )
    return sql, fields


@functools.cache
def charge_after(condition: str) -> tuple[str, list["Field[Any, Any]"]]:
    """PostgreSQL: a charge as two data-modifying CTEs, `charge_moved` and `charge_written`, for a statement that
    writes more (jobs.acceptance): the balance's UPDATE, only if `condition` (SQL) holds, and its ledger entry.
    Spending more than the balance fails the statement on BALANCE_NOT_NEGATIVE (credits_short says so); a missing
    account moves nothing. Parameters: the entry's amount, its account id, then insert_values(entry, fields)."""
    written, fields = _entry_written_after("charge_moved")
    sql = (
        f"charge_moved AS (UPDATE {_ACCOUNTS} SET balance = balance + %s WHERE user_id = %s AND {condition}"
        f" RETURNING balance), charge_written AS ({written})"
    )
    return sql, fields


def _new_entry(
    *,
    user_id: int,
    type: str,
    amount: int,
    posting_key: str,
    reason: str = "",
    job_id: UUID | str | None = None,
    created_by: User | None = None,
) -> LedgerEntry:
    return LedgerEntry(
        account_id=user_id,
        type=type,
        amount=amount,
        reason=reason[:REASON_MAX_LENGTH],
        job_id=job_id,
        posting_key=posting_key,
        created_by=created_by,
    )


def charge_entry(*, user_id: int, amount: int, job_id: UUID | str, reason: str = "") -> LedgerEntry:
    """The ledger entry of a job's charge of `amount`, not written yet (its posting key makes it once per job)."""
    return _new_entry(
        user_id=user_id,
        type=EntryType.CHARGE,
        amount=-amount,
        reason=reason,
        job_id=job_id,
        posting_key=charge_key(job_id),
    )


def _post(entry: LedgerEntry) -> LedgerEntry | None:
    """Apply the entry's amount to the balance and record it; a replayed posting key writes nothing (returns None).

    One statement on PostgreSQL when the posting goes through, two elsewhere (_apply), in the caller's
    transaction if there is one, without a savepoint. Off that path: an account row missing (users get one
    when created: credits.signals) is opened once, and a replay undoes its UPDATE.
    """
    user_id, amount, posting_key = entry.account_id, entry.amount, entry.posting_key
    with transaction.atomic(savepoint=False):
        balance, written = _apply(entry)
        if balance is None and _account_opened(user_id):
            balance, written = _apply(entry)
        if written:
            return entry
        if balance is not None:
            # Replayed: the posting with this key is done already; our UPDATE is undone in the same transaction.
            _move_balance(user_id=user_id, amount=-amount)
            return None
        replayed = LedgerEntry.objects.filter(posting_key=posting_key).exists()
    if replayed:
        return None
    raise credits_short(user_id=user_id, cost=-amount)


def credits_short(*, user_id: int, cost: int, what: str = "job") -> InsufficientCredits:
    """The refusal of a spend of `cost` the user's balance could not cover, with the balance now."""
    balance = CreditAccount.objects.filter(user_id=user_id).values_list("balance", flat=True).first() or 0
    return InsufficientCredits(balance=balance, cost=cost, what=what)


def _account_opened(user_id: int) -> bool:
    """Open the user's account if it is missing; whether it was."""
    _, created = CreditAccount.objects.get_or_create(user_id=user_id)
    return created


def _require_nonzero(amount: int) -> None:
    if amount == 0:
        raise InvalidInput([{"field": "amount", "message": "Must not be zero."}])


def credit_grant(
    *, user: User, amount: int, reason: str, created_by: User | None = None, posting_key: str = ""
) -> LedgerEntry | None:
    """Add credits (staff grants, new-user credits)."""
    if amount <= 0:
        raise InvalidInput([{"field": "amount", "message": "A grant must be positive."}])
    return _post_by_hand(
        type=EntryType.GRANT, user=user, amount=amount, reason=reason, created_by=created_by, posting_key=posting_key
    )


def credit_adjust(
    *, user: User, amount: int, reason: str, created_by: User | None = None, posting_key: str = ""
) -> LedgerEntry | None:
    """Correct a balance either way; it cannot go below zero (402 insufficient_credits)."""
    _require_nonzero(amount)
    return _post_by_hand(
        type=EntryType.ADJUSTMENT,
        user=user,
        amount=amount,
        reason=reason,
        created_by=created_by,
        posting_key=posting_key,
    )


def _post_by_hand(
    *, type: str, user: User, amount: int, reason: str, created_by: User | None, posting_key: str
) -> LedgerEntry | None:
    """A grant or an adjustment: once per `posting_key` if given, else under a fresh key of its type."""
    entry = _new_entry(
        user_id=user.pk,
        type=type,
        amount=amount,
        reason=reason,
        created_by=created_by,
        posting_key=posting_key or f"{type}:{uuid.uuid4()}",
    )
    return _post(entry)


def credit_charge(*, user_id: int, amount: int, job_id: UUID | str, reason: str = "") -> LedgerEntry | None:
    """Spend `amount` for a job, once per job; raises InsufficientCredits and writes nothing if short."""
    if amount == 0:
        return None
    return _post(charge_entry(user_id=user_id, amount=amount, job_id=job_id, reason=reason))


@dataclass(frozen=True)
class JobCharge:
    """One job's part of a charge of many (credit_charge_jobs)."""

    job_id: UUID
    amount: int
    reason: str = ""


def credit_charge_jobs(*, user_id: int, charges: Sequence[JobCharge], what: str = "batch") -> int:
    """Spend the total of many jobs' charges at once: all or nothing, one ledger entry per job (its posting key,
    as credit_charge writes it, so credit_refund refunds each job alone). Returns the total charged.

    Two statements in the caller's transaction however many jobs: the balance's conditional UPDATE for the
    total and a multi-row INSERT ... ON CONFLICT DO NOTHING of the entries; a replayed posting key writes
    nothing and its amount is given back. Raises InsufficientCredits (cost: the total) and writes nothing if short.
    """
    due = [charge for charge in charges if charge.amount]
    total = sum(charge.amount for charge in due)
    if not total:
        return 0
    with transaction.atomic(savepoint=False):
        balance = _move_balance(user_id=user_id, amount=-total)
        if balance is None and _account_opened(user_id):
            balance = _move_balance(user_id=user_id, amount=-total)
        if balance is None:
            raise credits_short(user_id=user_id, cost=total, what=what)
        entries, after = [], balance + total
        for charge in due:
            after -= charge.amount
            entry = charge_entry(user_id=user_id, amount=charge.amount, job_id=charge.job_id, reason=charge.reason)
            entry.balance_after = after
            entries.append(entry)
        written = insert_many_unless_conflict(entries, unique_field="posting_key")
        replayed = sum(-entry.amount for entry in entries if entry.posting_key not in written)
        if replayed:
            _move_balance(user_id=user_id, amount=replayed)
    return total - replayed


def credit_refund(*, job_id: UUID | str, reason: str) -> LedgerEntry | None:
    """Give back in full what a job was charged, once; a job that was never charged gets nothing."""
    charge = LedgerEntry.objects.filter(posting_key=charge_key(job_id)).first()
    if charge is None:
        return None
    return _post(
        _new_entry(
            user_id=charge.account_id,
            type=EntryType.REFUND,
            amount=-charge.amount,
            reason=reason,
            job_id=job_id,
            posting_key=refund_key(job_id),
        )
    )
