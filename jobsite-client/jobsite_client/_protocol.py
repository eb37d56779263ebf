"""The request/response layer both clients share, free of I/O.

Each operation is a generator (a "flow") that yields `Call`s to make and `Pause`s to sleep, receives each
call's `httpx.Response`, and returns the parsed result. `Client` drives flows with httpx.Client and
time.sleep, `AsyncClient` with httpx.AsyncClient and asyncio.sleep: the API's logic (paths, bodies, error
mapping, polling) exists once.
"""

from __future__ import annotations

import json
import time
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, TypedDict, TypeVar
from urllib.parse import parse_qsl, quote, urlsplit

import httpx

from jobsite_client.errors import WaitTimeout, error_for
from jobsite_client.models import (
    Balance,
    Batch,
    BatchCreated,
    Job,
    Limits,
    Me,
    StreamEvent,
    Upload,
    WebhookSecret,
    WebhookTestResult,
    parse,
)

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)

JOBS_PATH = "/api/v1/jobs/"
"""The job collection; submission, export and each job live under it."""

POLL_INTERVAL = 0.25
"""Seconds `wait()` first sleeps between polls when the service sends no `Retry-After`."""

MAX_POLL_INTERVAL = 5.0
"""Seconds the poll interval doubles up to."""

MAX_PREFER_WAIT = 10
"""Longest `Prefer: wait=N` sent: a server that honours it holds the request this long, well within the
client's default read timeout (30 s)."""

FINAL_STREAM_EVENT = "job"
"""The last event of a job's stream: the final job."""

NO_CONTENT = 204
"""What a job's stream answers once its final event was received: nothing more to send."""

DELIVERIES_PATH = "/api/v1/me/webhook-deliveries/"
"""The caller's webhook delivery log."""

BATCHES_PATH = "/api/v1/batches/"
"""The caller's batches; each batch's jobs, results and cancel live under it."""

UPLOADS_PATH = "/api/v1/uploads/"
"""Chunked uploads of JSONL files for batches."""

UPLOAD_CONTENT_TYPE = "application/offset+octet-stream"
"""The media type of an upload's chunk (tus)."""

UPLOAD_CHUNK = 1024 * 1024
"""Bytes per PATCH of an upload by default: well under the service's 2.5 MB request body limit."""

EXPORT_FORMATS = ("jsonl", "csv")
"""What `GET /api/v1/jobs/export/?format=` accepts."""


@dataclass(frozen=True)
class Call:
    """One HTTP request, relative to the client's base URL."""

    method: str
    path: str
    params: dict[str, str] = field(default_factory=dict)
    json: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    content: bytes | None = None
    """A raw body instead of `json` (an upload's chunk)."""


@dataclass(frozen=True)
class Pause:
    """Sleep this many seconds before the flow goes on."""

    seconds: float


Flow = Generator[Call | Pause, httpx.Response | None, T]
"""An operation: yields calls (answered with their response) and pauses (answered with None)."""


def checked(response: httpx.Response) -> Any:
    """The decoded JSON of a success; the typed `APIError` of an error (body read already)."""
    if response.is_success:
        return response.json()
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        body = None
    raise error_for(response.status_code, body, response.headers.get("Retry-After"))


def _one(call: Call, cls: type[T]) -> Flow[T]:
    response = yield call
    assert response is not None  # a Call is always answered
    return parse(cls, checked(response))


class SubmitOptions(TypedDict, total=False):
    """What an async submission may add to its kind and input: all optional, named as the API names them."""

    callback_url: str
    webhook_events: Sequence[str]
    """Events sent to callback_url besides the final webhook: `job.started`, `job.progress`."""
    wait: int
    """Seconds the service may hold the request for the job to finish (`Prefer: wait=N`, capped by its policy)."""
    run_at: datetime
    """Queue it no earlier than this (timezone-aware); until then the job is `scheduled`."""
    depends_on: Sequence[str]
    """Ids of own jobs to wait for; until they are final the job is `waiting`."""
    allow_dependency_failure: bool
    priority: str
    """`high`, `normal` or `low`, up to the policy's max_priority (above: `PermissionDenied`, `priority_not_allowed`)."""


SEQUENCES = frozenset({"depends_on", "webhook_events"})
"""Options sent as JSON arrays."""


def _post_job(
    mode: str, kind: str, job_input: Mapping[str, Any], idempotency_key: str | None, **options: Any
) -> Flow[Job]:
    body: dict[str, Any] = {"kind": kind, "input": dict(job_input)}
    wait = options.pop("wait", None)
    for name, value in options.items():
        if name == "run_at" and value.tzinfo is None:
            raise ValueError("run_at must be timezone-aware: the API takes RFC 3339 instants with an offset")
        body[name] = value.isoformat() if name == "run_at" else list(value) if name in SEQUENCES else value
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key is not None else {}
    if wait is not None:
        headers["Prefer"] = f"wait={wait}"
    return _one(Call("POST", f"{JOBS_PATH}{mode}/", json=body, headers=headers), Job)


def run(kind: str, job_input: Mapping[str, Any], idempotency_key: str | None) -> Flow[Job]:
    return _post_job("sync", kind, job_input, idempotency_key)


def submit(kind: str, job_input: Mapping[str, Any], idempotency_key: str | None, options: SubmitOptions) -> Flow[Job]:
    """200 (the final job: `options["wait"]` sufficed) or 202 (queued, held or running) both answer the job."""
    return _post_job("async", kind, job_input, idempotency_key, **options)


def _job_path(job_id: str) -> str:
    """The job's URL path; the id is escaped, so that no id can name another route."""
    return f"{JOBS_PATH}{quote(job_id, safe='')}/"


def get(job_id: str) -> Flow[Job]:
    return _one(Call("GET", _job_path(job_id)), Job)


def cancel(job_id: str) -> Flow[Job]:
    return _one(Call("POST", f"{_job_path(job_id)}cancel/"), Job)


def wait(job_id: str, timeout: float, poll_interval: float) -> Flow[Job]:
    """Poll until the job is final: honours `Retry-After`, asks `Prefer: wait=N` and, where the service
    says `Preference-Applied` (it held the request), polls again at once; else backs off to MAX_POLL_INTERVAL."""
    deadline = time.monotonic() + timeout
    interval = poll_interval
    while True:
        prefer = min(MAX_PREFER_WAIT, int(deadline - time.monotonic()))
        headers = {"Prefer": f"wait={prefer}"} if prefer >= 1 else {}
        response = yield Call("GET", _job_path(job_id), headers=headers)
        assert response is not None
        job = parse(Job, checked(response))
        remaining = deadline - time.monotonic()
        if job.finished:
            return job
        if remaining <= 0:
            raise WaitTimeout(job, timeout)
        if "wait" in response.headers.get("Preference-Applied", ""):
            continue
        retry_after = response.headers.get("Retry-After", "")
        delay = int(retry_after) if retry_after.strip().isdigit() else interval
        interval = min(interval * 2, MAX_POLL_INTERVAL)
        yield Pause(min(delay, remaining))


def events_call(job_id: str, last_event_id: str | None) -> Call:
    """One connection to the job's event stream, resuming after `last_event_id` if given."""
    headers = {"Accept": "text/event-stream", **({"Last-Event-ID": last_event_id} if last_event_id else {})}
    return Call("GET", f"{_job_path(job_id)}events/", headers=headers)


class EventStreamParser:
    """Server-Sent Events, line by line: `feed` returns each complete event; comments (keep-alives) are skipped."""

    def __init__(self) -> None:
        self._fields: dict[str, str] = {}
        self.last_event_id: str | None = None
        self.retry_ms: int | None = None

    def feed(self, line: str) -> StreamEvent | None:
        if line.startswith(":"):
            return None
        if line:
            name, _, value = line.partition(":")
            self._fields[name] = value.removeprefix(" ")
            return None
        fields, self._fields = self._fields, {}
        if "retry" in fields and fields["retry"].isdigit():
            self.retry_ms = int(fields["retry"])
        if "data" not in fields:
            return None
        event = StreamEvent(
            event=fields.get("event", "message"), id=fields.get("id", ""), data=json.loads(fields["data"])
        )
        self.last_event_id = event.id or self.last_event_id
        return event


def _filters(**filters: Any) -> dict[str, str]:
    return {
        name: value.isoformat() if isinstance(value, datetime) else str(value)
        for name, value in filters.items()
        if value is not None
    }


class JobFilters(TypedDict, total=False):
    """The job list's filters (API.md): all optional; `created_*` are exclusive bounds."""

    mode: str
    status: str
    kind: str
    created_after: datetime | str
    created_before: datetime | str
    page_size: int


def page_call(filters: JobFilters) -> Call:
    """The first page of the caller's jobs matching the filters, newest first."""
    return Call("GET", JOBS_PATH, params=_filters(**filters))


class Paged(Protocol[T_co]):
    """A page of a cursor-paginated list (`JobPage`, `WebhookDeliveryPage`)."""

    @property
    def results(self) -> Sequence[T_co]: ...

    @property
    def next(self) -> str | None: ...


PageT = TypeVar("PageT", bound=Paged[Any])


def page(call: Call, cls: type[PageT]) -> Flow[PageT]:
    return _one(call, cls)


def next_page_call(current: Call, next_url: str | None) -> Call | None:
    """The call for the page after this one: the same path and filters with the `next` link's query (its cursor).

    Only the query of `next` is used, so that a proxy's idea of the host never redirects the client."""
    if next_url is None:
        return None
    return Call("GET", current.path, params={**current.params, **dict(parse_qsl(urlsplit(next_url).query))})


class DeliveryFilters(TypedDict, total=False):
    """The delivery log's filters: all optional; `created_*` are exclusive bounds."""

    status: str
    job_id: str
    created_after: datetime | str
    created_before: datetime | str
    page_size: int


def deliveries_call(filters: DeliveryFilters) -> Call:
    """The first page of the caller's webhook deliveries matching the filters, newest first."""
    return Call("GET", DELIVERIES_PATH, params=_filters(**filters))


def test_webhook(url: str) -> Flow[WebhookTestResult]:
    return _one(Call("POST", "/api/v1/me/webhooks/test/", json={"url": url}), WebhookTestResult)


def redeliver(job_id: str) -> Flow[Job]:
    return _one(Call("POST", f"{_job_path(job_id)}webhook/redeliver/"), Job)


def export_call(
    export_format: str, created_after: datetime | str | None, created_before: datetime | str | None
) -> Call:
    if export_format not in EXPORT_FORMATS:
        raise ValueError(f"format must be one of {', '.join(EXPORT_FORMATS)}")
    params = _filters(format=export_format, created_after=created_after, created_before=created_before)
    return Call("GET", f"{JOBS_PATH}export/", params=params)


def balance() -> Flow[Balance]:
    return _one(Call("GET", "/api/v1/credits/"), Balance)


def limits() -> Flow[Limits]:
    return _one(Call("GET", "/api/v1/me/limits/"), Limits)


def me() -> Flow[Me]:
    return _one(Call("GET", "/api/v1/me/"), Me)


def rotate_webhook_secret() -> Flow[WebhookSecret]:
    return _one(Call("POST", "/api/v1/me/webhook-secret/"), WebhookSecret)


def _batch_path(batch_id: str) -> str:
    return f"{BATCHES_PATH}{quote(batch_id, safe='')}/"


def submit_batch(
    requests: Sequence[Mapping[str, Any]] | None,
    upload_id: str | None,
    callback_url: str | None,
    idempotency_key: str | None,
) -> Flow[BatchCreated]:
    if (requests is None) == (upload_id is None):
        raise ValueError("pass either requests or upload_id")
    body: dict[str, Any] = {"requests": list(requests)} if requests is not None else {"upload_id": upload_id}
    if callback_url is not None:
        body["callback_url"] = callback_url
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key is not None else {}
    return _one(Call("POST", BATCHES_PATH, json=body, headers=headers), BatchCreated)


def get_batch(batch_id: str) -> Flow[Batch]:
    return _one(Call("GET", _batch_path(batch_id)), Batch)


def cancel_batch(batch_id: str) -> Flow[Batch]:
    return _one(Call("POST", f"{_batch_path(batch_id)}cancel/"), Batch)


def batches_call() -> Call:
    return Call("GET", BATCHES_PATH)


def batch_jobs_call(batch_id: str, page_size: int | None) -> Call:
    return Call("GET", f"{_batch_path(batch_id)}jobs/", params=_filters(page_size=page_size))


def batch_results_call(batch_id: str) -> Call:
    return Call("GET", f"{_batch_path(batch_id)}results/")


def upload(data: bytes, chunk_size: int) -> Flow[Upload]:
    """Announce the file, then send it chunk by chunk from where the service says it stands."""
    created = yield Call("POST", UPLOADS_PATH, headers={"Upload-Length": str(len(data))})
    assert created is not None
    return (yield from _send_chunks(parse(Upload, checked(created)), data, chunk_size))


def resume_upload(upload_id: str, data: bytes, chunk_size: int) -> Flow[Upload]:
    """Carry on an upload whose connection broke: ask where it stands, send the rest."""
    current = yield Call("GET", f"{UPLOADS_PATH}{quote(upload_id, safe='')}/")
    assert current is not None
    return (yield from _send_chunks(parse(Upload, checked(current)), data, chunk_size))


def _send_chunks(current: Upload, data: bytes, chunk_size: int) -> Flow[Upload]:
    if len(data) != current.length:
        raise ValueError(f"the upload announced {current.length} bytes; got {len(data)}")
    while current.offset < current.length:
        start = current.offset
        response = yield Call(
            "PATCH",
            f"{UPLOADS_PATH}{quote(current.id, safe='')}/",
            headers={"Upload-Offset": str(start), "Content-Type": UPLOAD_CONTENT_TYPE},
            content=data[start : start + chunk_size],
        )
        assert response is not None
        current = parse(Upload, checked(response))
    return current
