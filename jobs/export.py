"""The job export: rows streamed from a server-side cursor inside one transaction, in chunks.

On PostgreSQL `.iterator()` inside `transaction.atomic()` is a named cursor WITHOUT HOLD: rows come as the
client reads them, nothing is materialised first (outside a transaction Django declares it WITH HOLD, and
PostgreSQL then builds the whole result in a temporary file before the first row). The transaction lives
exactly as long as the generator: it ends when the stream does, or when the WSGI server closes the
generator because the client went away.
"""

import csv
import io
import json
import logging
from collections.abc import Iterator
from contextlib import closing
from datetime import datetime, tzinfo
from itertools import chain, islice, repeat
from typing import Any
from uuid import UUID

from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from jobs.encryption import masked_input, open_result
from jobs.kind_settings import get_kind_settings
from jobs.models import CallbackAttempt, Job

logger = logging.getLogger(__name__)

EXPORT_CHUNK = 1000
"""Rows per cursor fetch and per chunk written to the client."""

FIRST_CHUNK = 20
"""Rows of the first chunk: the client sees data after twenty rows' work, not a thousand's."""

EXPORT_FIELDS = [
    "id", "kind", "mode", "status", "input", "result", "error_code", "error_message", "cost", "attempts",
    "attempt_log", "cached", "created_at", "started_at", "finished_at", "queue_wait_ms", "run_ms",
    "callback_url", "callback_status",
]  # fmt: skip
ATTEMPT_FIELDS = ["n", "at", "status_code", "error", "duration_ms"]

CSV_COLUMNS = [
    "id", "kind", "mode", "status", "cost", "attempts", "cached", "created_at", "started_at",
    "finished_at", "queue_wait_ms", "run_ms", "error_code", "error_message", "input", "result",
]  # fmt: skip


def _when(value: datetime | None, zone: tzinfo) -> str | None:
    """DRF's datetime format (ISO 8601 in the current time zone, UTC as Z) at a fraction of its cost per call."""
    if value is None:
        return None
    text = value.astimezone(zone).isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def export_row(row: dict[str, Any], attempts: list[dict[str, Any]], zone: tzinfo) -> dict[str, Any]:
    """JobSerializer's representation built from a values() row: the serializer costs ~10x more per row,
    too slow for 20 000 rows/s (tests/test_scale.py holds the two equal)."""
    error = {"code": row["error_code"], "message": row["error_message"]} if row["error_code"] else None
    callback_attempts = [{**attempt, "at": _when(attempt["at"], zone)} for attempt in attempts]
    return {
        "id": str(row["id"]), "kind": row["kind"], "mode": row["mode"], "status": row["status"],
        "input": masked_input(get_kind_settings(row["kind"]), row["input"]), "result": open_result(row["result"]),
        "error": error, "cost": row["cost"], "attempts": row["attempts"], "attempt_log": row["attempt_log"],
        "cached": row["cached"], "created_at": _when(row["created_at"], zone),
        "started_at": _when(row["started_at"], zone), "finished_at": _when(row["finished_at"], zone),
        "queue_wait_ms": row["queue_wait_ms"], "run_ms": row["run_ms"],
        "callback": {"url": row["callback_url"], "status": row["callback_status"], "attempts": callback_attempts},
    }  # fmt: skip


def _attempts_of(rows: list[dict[str, Any]]) -> dict[UUID, list[dict[str, Any]]]:
    """The webhook attempts of one chunk's jobs, in one query (only jobs with a callback have any)."""
    with_callback = [row["id"] for row in rows if row["callback_url"]]
    by_job: dict[UUID, list[dict[str, Any]]] = {}
    if with_callback:
        attempts = CallbackAttempt.objects.filter(job_id__in=with_callback).order_by("job_id", "n")
        for attempt in attempts.values("job_id", *ATTEMPT_FIELDS):
            by_job.setdefault(attempt.pop("job_id"), []).append(attempt)
    return by_job


def export_chunks(jobs: QuerySet[Job], *, chunk_size: int = EXPORT_CHUNK) -> Iterator[list[dict[str, Any]]]:
    """The jobs as exported rows, chunk by chunk, from one cursor in one transaction held only while iterated."""
    sent = 0
    finished = False
    zone = timezone.get_current_timezone()
    try:
        with transaction.atomic(), closing(jobs.values(*EXPORT_FIELDS).iterator(chunk_size=chunk_size)) as rows:
            sizes = chain([min(FIRST_CHUNK, chunk_size)], repeat(chunk_size))
            while chunk := list(islice(rows, next(sizes))):
                attempts = _attempts_of(chunk)
                yield [export_row(row, attempts.get(row["id"], []), zone) for row in chunk]
                sent += len(chunk)
            finished = True
    finally:  # GeneratorExit (client gone) has rolled back and closed the cursor by now
        logger.info("export %s after %d row(s)", "finished" if finished else "stopped", sent)


def export_jsonl(chunks: Iterator[list[dict[str, Any]]]) -> Iterator[str]:
    for chunk in chunks:
        yield "".join(json.dumps(row, separators=(",", ":")) + "\n" for row in chunk)


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
            flat["input"] = json.dumps(row["input"], separators=(",", ":"))
            flat["result"] = json.dumps(row["result"], separators=(",", ":"))
            writer.writerow(["" if flat[column] is None else flat[column] for column in CSV_COLUMNS])
        yield flush()
