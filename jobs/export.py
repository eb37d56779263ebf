"""The job export: rows streamed from a server-side cursor inside one transaction, in chunks.

On PostgreSQL `.iterator()` inside `transaction.atomic()` is a named cursor WITHOUT HOLD: rows come as the
client reads them, nothing is materialised first (outside a transaction Django declares it WITH HOLD, and
PostgreSQL then builds the whole result in a temporary file before the first row). The transaction lives
exactly as long as the generator: it ends when the stream does, or when the WSGI server closes the
generator because the client went away.

Per row the cursor yields a plain tuple of just the exported columns, the times already written as text by
the database (`UtcText`) and the webhook attempts as one JSON array: a row costs a few dict and JSON
operations, no model instance, no datetime, no query of its own.
"""

import csv
import io
import json
import logging
from collections.abc import Callable, Generator, Iterator
from contextlib import closing
from itertools import chain, islice, repeat
from typing import Any, cast

from django.db import connection, transaction
from django.db.models import Aggregate, Case, CharField, Func, OuterRef, QuerySet, Subquery, TextField, When
from django.db.models.expressions import Combinable
from django.db.models.functions import Cast, JSONArray

from accounts.models import split_list
from jobs.encryption import could_be_sealed, input_masker, open_result
from jobs.kind_settings import get_kind_settings
from jobs.models import CallbackAttempt, Job, KindSettings

logger = logging.getLogger(__name__)

EXPORT_CHUNK = 2000
"""Rows per cursor fetch and per chunk written to the client."""

FIRST_CHUNK = 20
"""Rows of the first chunk: the client sees data after twenty rows' work, not a chunk's."""


class UtcText(Func):
    """A timestamp as the API writes it (DRF: ISO 8601 in UTC, microseconds only when non-zero, `Z`), formatted
    by the database: parsing three datetimes and formatting them again in Python took a quarter of a row's time.
    UTC is the contract's (API.md: "Times are RFC 3339 UTC") and the project's only TIME_ZONE."""

    output_field = CharField()

    def as_postgresql(self, compiler: Any, connection: Any, **extra: Any) -> Any:
        template = (
            "replace(to_char(%(expressions)s AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), '.000000Z', 'Z')"
        )
        return self.as_sql(compiler, connection, template=template, **extra)

    def as_sqlite(self, compiler: Any, connection: Any, **extra: Any) -> Any:
        # Django stores UTC as str(datetime): "YYYY-MM-DD HH:MM:SS[.ffffff]"
        return self.as_sql(compiler, connection, template="replace(%(expressions)s, ' ', 'T') || 'Z'", **extra)


class JSONArrayAgg(Aggregate):
    """The group's values as the text of one JSON array (PostgreSQL jsonb_agg, SQLite json_group_array)."""

    function = "JSON_GROUP_ARRAY"
    output_field = TextField()

    def as_postgresql(self, compiler: Any, connection: Any, **extra: Any) -> Any:
        template = "%(function)s(%(expressions)s)::text"
        return self.as_sql(compiler, connection, function="JSONB_AGG", template=template, **extra)


def _callback_attempts() -> Case:
    """A job's webhook attempts as a JSON array of [n, at, status_code, error, duration_ms], read in the job's own
    row: one index probe for each job with a callback, where a query per chunk (400 ids) made PostgreSQL scan the
    whole attempts table (46 ms a chunk at 1M jobs)."""
    attempts = CallbackAttempt.objects.filter(job=OuterRef("pk")).order_by().values("job")
    row = JSONArray("n", UtcText("at"), "status_code", "error", "duration_ms")
    return Case(
        When(callback_url="", then=None), default=Subquery(attempts.annotate(all=JSONArrayAgg(row)).values("all"))
    )


EXPORT_COLUMNS: list[str | Combinable] = [
    "id",
    "kind",
    "mode",
    "priority",
    "status",
    Cast("input", TextField()),
    Cast("result", TextField()),
    "error_code",
    "error_message",
    "cost",
    "attempts",
    Cast("attempt_log", TextField()),
    "cached",
    UtcText("created_at"),
    UtcText("started_at"),
    UtcText("finished_at"),
    "queue_wait_ms",
    "run_ms",
    UtcText("expires_at"),
    UtcText("run_at"),
    Cast("depends_on", TextField()),
    "allow_dependency_failure",
    Cast("progress", TextField()),
    "callback_url",
    "callback_status",
    "webhook_events",
    _callback_attempts(),
]
"""What the export reads of a job, in tuple order: only the columns it writes, its webhook attempts included.
JSON columns are read as text and parsed here: Django's JSONField converter costs more per row than the parse."""
NO_ATTEMPTS = "[]"
"""attempt_log (and depends_on) of nearly every job, read as text: parsing it costs as much as the rest of the row."""
_KIND = EXPORT_COLUMNS.index("kind")
ATTEMPT_FIELDS = ["n", "at", "status_code", "error", "duration_ms"]

CSV_COLUMNS = [
    "id",
    "kind",
    "mode",
    "status",
    "cost",
    "attempts",
    "cached",
    "created_at",
    "started_at",
    "finished_at",
    "queue_wait_ms",
    "run_ms",
    "expires_at",
    "error_code",
    "error_message",
    "input",
    "result",
]
_CSV_ERROR = CSV_COLUMNS.index("error_code")
"""CSV columns before this one are the row's own values; error, input and result are flattened to text."""

_encode = json.JSONEncoder(separators=(",", ":")).encode
"""json.dumps(..., separators=(",", ":")) without building an encoder per call."""

_raw_decode = json.JSONDecoder().raw_decode


def _decode(text: str) -> Any:
    """json.loads of the text the database wrote (no surrounding whitespace), without its per-call checks."""
    return _raw_decode(text)[0]


def export_query(jobs: QuerySet[Job]) -> QuerySet[Job, tuple[Any, ...]]:
    """The jobs as tuples of EXPORT_COLUMNS, in the queryset's order (newest first)."""
    return jobs.values_list(*EXPORT_COLUMNS)


def _attempts(text: str | None) -> list[dict[str, Any]]:
    if text is None:
        return []
    attempts = sorted(_decode(text))  # by n: an aggregate's order is not guaranteed
    return [dict(zip(ATTEMPT_FIELDS, attempt, strict=True)) for attempt in attempts]


def _progress(text: str | None) -> dict[str, Any] | None:
    """JobProgressSerializer's representation of the stored progress (a JSON null read as text is "null")."""
    progress = None if text is None else _decode(text)
    if progress is None:
        return None
    fraction = progress["fraction"]
    fraction = None if fraction is None else float(fraction)
    return {"fraction": fraction, "message": progress["message"], "updated_at": progress["updated_at"]}


def _input_reader(kind_settings: KindSettings) -> Callable[[str], dict[str, Any]]:
    """The masked input of a job of this kind from its JSON text; masking is skipped where it cannot change anything
    (a kind without encrypted fields, text without a sealed value)."""
    mask = input_masker(kind_settings)
    if kind_settings.encrypt_field_list:
        return lambda text: mask(_decode(text))
    return lambda text: mask(_decode(text)) if could_be_sealed(text) else _decode(text)


def _result(text: str | None) -> Any:
    if text is None:
        return None
    return open_result(_decode(text)) if could_be_sealed(text) else _decode(text)


def _row(values: tuple[Any, ...], read_input: Callable[[str], dict[str, Any]]) -> dict[str, Any]:
    """JobSerializer's representation of one export tuple: the serializer costs ~10x more per row, too slow for
    20 000 rows/s (tests/test_scale.py holds the two equal, byte for byte)."""
    (
        job_id,
        kind,
        mode,
        priority,
        status,
        input_,
        result,
        error_code,
        error_message,
        cost,
        tries,
        attempt_log,
        cached,
        created_at,
        started_at,
        finished_at,
        queue_wait_ms,
        run_ms,
        expires_at,
        run_at,
        depends_on,
        allow_dependency_failure,
        progress,
        callback_url,
        callback_status,
        webhook_events,
        attempts,
    ) = values
    return {
        "id": str(job_id),
        "kind": kind,
        "mode": mode,
        "priority": priority,
        "status": status,
        "input": read_input(input_),
        "result": _result(result),
        "error": {"code": error_code, "message": error_message} if error_code else None,
        "cost": cost,
        "attempts": tries,
        "attempt_log": [] if attempt_log == NO_ATTEMPTS else _decode(attempt_log),
        "cached": cached,
        "created_at": created_at,
        "started_at": started_at,
        "finished_at": finished_at,
        "queue_wait_ms": queue_wait_ms,
        "run_ms": run_ms,
        "expires_at": expires_at,
        "run_at": run_at,
        "depends_on": [] if depends_on == NO_ATTEMPTS else _decode(depends_on),
        "allow_dependency_failure": allow_dependency_failure,
        "progress": _progress(progress),
        "callback": {
            "url": callback_url,
            "status": callback_status,
            "attempts": _attempts(attempts),
            "events": split_list(webhook_events) if webhook_events else [],
        },
    }


def _rows(chunk: list[tuple[Any, ...]]) -> list[dict[str, Any]]:
    readers = {kind: _input_reader(get_kind_settings(kind)) for kind in {row[_KIND] for row in chunk}}  # once a chunk
    return [_row(values, readers[values[_KIND]]) for values in chunk]


def _no_jit() -> None:
    """PostgreSQL compiles a query this long (its cost counts every row) before the first row: 0.6 s at 1M jobs,
    more at 10M. A cursor read from its first row gains nothing from it; SET LOCAL ends with the transaction."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SET LOCAL jit = off")


def stream_chunks(
    rows_query: QuerySet[Any, tuple[Any, ...]], *, chunk_size: int = EXPORT_CHUNK, what: str = "export"
) -> Generator[list[tuple[Any, ...]]]:
    """A values_list query's tuples, chunk by chunk, from one cursor in one transaction held only while iterated."""
    sent = 0
    finished = False
    try:
        # QuerySet.iterator() is a generator (typed Iterator): closing it closes the server-side cursor.
        with (
            transaction.atomic(),
            closing(cast(Generator[tuple[Any, ...]], rows_query.iterator(chunk_size=chunk_size))) as rows,
        ):
            _no_jit()
            sizes = chain([min(FIRST_CHUNK, chunk_size)], repeat(chunk_size))
            while chunk := list(islice(rows, next(sizes))):
                yield chunk
                sent += len(chunk)
            finished = True
    finally:  # GeneratorExit (client gone) has rolled back and closed the cursor by now
        logger.info("%s %s after %d row(s)", what, "finished" if finished else "stopped", sent)


def export_chunks(jobs: QuerySet[Job], *, chunk_size: int = EXPORT_CHUNK) -> Iterator[list[dict[str, Any]]]:
    """The jobs as exported rows, chunk by chunk, from one cursor in one transaction held only while iterated."""
    with closing(stream_chunks(export_query(jobs), chunk_size=chunk_size)) as chunks:  # closed with this generator
        for chunk in chunks:
            yield _rows(chunk)


def export_jsonl(chunks: Iterator[list[dict[str, Any]]]) -> Iterator[str]:
    for chunk in chunks:
        yield "".join([_encode(row) + "\n" for row in chunk])


def _csv_cells(row: dict[str, Any]) -> list[Any]:
    error = row["error"] or {"code": "", "message": ""}
    plain = ["" if row[column] is None else row[column] for column in CSV_COLUMNS[:_CSV_ERROR]]
    return [*plain, error["code"], error["message"], _encode(row["input"]), _encode(row["result"])]


def export_csv(chunks: Iterator[list[dict[str, Any]]]) -> Iterator[str]:
    buffer = io.StringIO()
    writer = csv.writer(buffer)

    def flush() -> str:
        text = buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
        return text

    writer.writerow(CSV_COLUMNS)  # sent with the first rows: a write of its own waited on the client's delayed ACK
    for chunk in chunks:
        writer.writerows(map(_csv_cells, chunk))
        yield flush()
    if buffer.tell():  # no jobs: the header alone
        yield flush()
