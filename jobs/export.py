"""The job export: rows streamed from a server-side cursor inside one transaction, in chunks.

On PostgreSQL `.iterator()` inside `transaction.atomic()` is a named cursor WITHOUT HOLD: rows come as the
client reads them, nothing is materialised first (outside a transaction Django declares it WITH HOLD, and
PostgreSQL then builds the whole result in a temporary file before the first row). The transaction lives
exactly as long as the generator: it ends when the stream does, or when the WSGI server closes the
generator because the client went away.

Per row the cursor yields plain tuples of just the exported columns, with the times already written as text
by the database (`UtcText`): a row costs a few dict and JSON operations, no model instance, no datetime.
"""

import csv
import io
import json
import logging
from collections.abc import Iterator
from contextlib import closing
from itertools import chain, islice, repeat
from typing import Any

from django.db import transaction
from django.db.models import CharField, Func, QuerySet, TextField
from django.db.models.functions import Cast

from jobs.encryption import input_masker, open_result
from jobs.kind_settings import get_kind_settings
from jobs.models import CallbackAttempt, Job

logger = logging.getLogger(__name__)

EXPORT_CHUNK = 2000
"""Rows per cursor fetch and per chunk written to the client."""

FIRST_CHUNK = 20
"""Rows of the first chunk: the client sees data after twenty rows' work, not a chunk's."""


class UtcText(Func):
    """A timestamp as the API writes it (DRF: ISO 8601 in UTC, microseconds only when non-zero, `Z`), formatted
    by the database: parsing a datetime and formatting it again in Python cost more than the rest of a row.
    UTC is the contract's (API.md: "Times are RFC 3339 UTC") and the project's only TIME_ZONE."""

    output_field = CharField()

    def as_postgresql(self, compiler: Any, connection: Any, **extra: Any) -> Any:
        template = "replace(to_char(%(expressions)s AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), '.000000Z', 'Z')"
        return self.as_sql(compiler, connection, template=template, **extra)

    def as_sqlite(self, compiler: Any, connection: Any, **extra: Any) -> Any:
        # Django stores UTC as str(datetime): "YYYY-MM-DD HH:MM:SS[.ffffff]"
        return self.as_sql(compiler, connection, template="replace(%(expressions)s, ' ', 'T') || 'Z'", **extra)


EXPORT_COLUMNS = [
    "id", "kind", "mode", "status", "input", "result", "error_code", "error_message", "cost", "attempts",
    Cast("attempt_log", TextField()), "cached", UtcText("created_at"), UtcText("started_at"), UtcText("finished_at"), "queue_wait_ms",
    "run_ms", "callback_url", "callback_status",
]  # fmt: skip
"""What the export reads of a job, in tuple order: only the columns it writes."""
NO_ATTEMPTS = "[]"
"""attempt_log of nearly every job, read as text: parsing it costs as much as the rest of the row's JSON."""
_KIND, _CALLBACK_URL = EXPORT_COLUMNS.index("kind"), EXPORT_COLUMNS.index("callback_url")

CSV_COLUMNS = [
    "id", "kind", "mode", "status", "cost", "attempts", "cached", "created_at", "started_at",
    "finished_at", "queue_wait_ms", "run_ms", "error_code", "error_message", "input", "result",
]  # fmt: skip

_encode = json.JSONEncoder(separators=(",", ":")).encode
"""json.dumps(..., separators=(",", ":")) without building an encoder per call."""


def export_query(jobs: QuerySet[Job]) -> QuerySet[Job]:
    """The jobs as tuples of EXPORT_COLUMNS, in the queryset's order (newest first)."""
    return jobs.values_list(*EXPORT_COLUMNS)


def _attempts_of(rows: list[tuple]) -> dict[Any, list[dict[str, Any]]]:
    """The webhook attempts of one chunk's jobs, in one query (only jobs with a callback have any)."""
    with_callback = [row[0] for row in rows if row[_CALLBACK_URL]]
    by_job: dict[Any, list[dict[str, Any]]] = {}
    if with_callback:
        attempts = CallbackAttempt.objects.filter(job_id__in=with_callback).order_by("job_id", "n")
        for job_id, n, at, status_code, error, duration_ms in attempts.values_list(
            "job_id", "n", UtcText("at"), "status_code", "error", "duration_ms"
        ):
            by_job.setdefault(job_id, []).append(
                {"n": n, "at": at, "status_code": status_code, "error": error, "duration_ms": duration_ms}
            )
    return by_job


def _rows(chunk: list[tuple]) -> list[dict[str, Any]]:
    """JobSerializer's representation of a chunk of export tuples: the serializer costs ~10x more per row,
    too slow for 20 000 rows/s (tests/test_scale.py holds the two equal)."""
    attempts = _attempts_of(chunk)
    masks = {kind: input_masker(get_kind_settings(kind)) for kind in {row[_KIND] for row in chunk}}  # once a chunk
    return [
        {
            "id": str(job_id), "kind": kind, "mode": mode, "status": status,
            "input": masks[kind](input_), "result": open_result(result),
            "error": {"code": error_code, "message": error_message} if error_code else None,
            "cost": cost, "attempts": tries, "attempt_log": [] if attempt_log == NO_ATTEMPTS else json.loads(attempt_log),
            "cached": cached,
            "created_at": created_at, "started_at": started_at, "finished_at": finished_at,
            "queue_wait_ms": queue_wait_ms, "run_ms": run_ms,
            "callback": {"url": callback_url, "status": callback_status, "attempts": attempts.get(job_id, [])},
        }  # fmt: skip
        for (job_id, kind, mode, status, input_, result, error_code, error_message, cost, tries, attempt_log, cached,
             created_at, started_at, finished_at, queue_wait_ms, run_ms, callback_url, callback_status) in chunk
    ]  # fmt: skip


def export_chunks(jobs: QuerySet[Job], *, chunk_size: int = EXPORT_CHUNK) -> Iterator[list[dict[str, Any]]]:
    """The jobs as exported rows, chunk by chunk, from one cursor in one transaction held only while iterated."""
    sent = 0
    finished = False
    try:
        with transaction.atomic(), closing(export_query(jobs).iterator(chunk_size=chunk_size)) as rows:
            sizes = chain([min(FIRST_CHUNK, chunk_size)], repeat(chunk_size))
            while chunk := list(islice(rows, next(sizes))):
                yield _rows(chunk)
                sent += len(chunk)
            finished = True
    finally:  # GeneratorExit (client gone) has rolled back and closed the cursor by now
        logger.info("export %s after %d row(s)", "finished" if finished else "stopped", sent)


def export_jsonl(chunks: Iterator[list[dict[str, Any]]]) -> Iterator[str]:
    for chunk in chunks:
        yield "".join([_encode(row) + "\n" for row in chunk])


def export_csv(chunks: Iterator[list[dict[str, Any]]]) -> Iterator[str]:
    buffer = io.StringIO()
    writer = csv.writer(buffer)

    def flush() -> str:
        text = buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
        return text

    writer.writerow(CSV_COLUMNS)
    yield flush()
    for chunk in chunks:
        for row in chunk:
            error = row["error"] or {"code": "", "message": ""}
            flat = {**row, "error_code": error["code"], "error_message": error["message"]}
            flat["input"] = _encode(row["input"])
            flat["result"] = _encode(row["result"])
            writer.writerow(["" if flat[column] is None else flat[column] for column in CSV_COLUMNS])
        yield flush()
