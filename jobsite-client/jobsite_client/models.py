"""The API's resources as frozen dataclasses, parsed from JSON by their type hints.

A field without a default is one the OpenAPI schema lists as required (it may still be nullable: `X | None`);
a field with a default is optional there. Members the service adds later are ignored, so an older client
keeps working against a newer service; `tests/test_client_schema.py` fails when these drift from the schema.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from datetime import datetime
from typing import Any, TypeVar, Union, get_args, get_origin, get_type_hints

T = TypeVar("T")

FINAL_STATUSES = frozenset({"succeeded", "failed", "canceled"})
"""Job statuses that never change again."""


class MalformedResponse(ValueError):
    """A response lacks a member the schema requires, or has one of the wrong shape."""


Converter = Callable[[Any], Any]
"""Turns one decoded JSON member into the field's value."""


def parse(cls: type[T], data: Any) -> T:
    """Build the dataclass `cls` from decoded JSON: nested dataclasses, lists, datetimes; extra keys ignored."""
    if not isinstance(data, dict):
        raise MalformedResponse(f"{cls.__name__}: expected an object, got {type(data).__name__}")
    converters, required = _shape(cls)
    if missing := [name for name in required if name not in data]:
        raise MalformedResponse(f"{cls.__name__}: missing {', '.join(missing)}")
    try:
        return cls(
            **{
                name: data[name] if convert is None or data[name] is None else convert(data[name])
                for name, convert in converters.items()
                if name in data
            }
        )
    except (TypeError, ValueError) as exc:  # a member of the wrong shape, at any depth
        raise MalformedResponse(f"{cls.__name__}: {exc}") from exc


_SHAPES: dict[type, tuple[dict[str, Converter | None], tuple[str, ...]]] = {}
"""Per model class: each field's converter (None: taken as decoded), and the fields without a default.

Built once per class: resolving type hints costs far more than parsing (loadgen parses every answer)."""


def _shape(cls: type) -> tuple[dict[str, Converter | None], tuple[str, ...]]:
    if cls not in _SHAPES:
        hints = get_type_hints(cls)
        _SHAPES[cls] = (
            {f.name: _converter(hints[f.name]) for f in fields(cls)},
            tuple(f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING),
        )
    return _SHAPES[cls]


def _converter(hint: Any) -> Converter | None:
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        (inner,) = [arg for arg in get_args(hint) if arg is not type(None)]
        return _converter(inner)  # None itself is never converted (parse passes it through)
    if origin is list:
        item = _converter(get_args(hint)[0])
        return None if item is None else lambda values: [item(value) for value in values]
    if is_dataclass(hint):
        return lambda value: parse(hint, value)  # type: ignore[arg-type]
    if hint is datetime:
        return datetime.fromisoformat
    return None


@dataclass(frozen=True)
class JobError:
    """Why a job failed."""

    code: str
    message: str


@dataclass(frozen=True)
class CallbackAttempt:
    """One webhook delivery attempt."""

    n: int
    at: datetime
    status_code: int | None = None
    error: str = ""
    duration_ms: int | None = None


@dataclass(frozen=True)
class Callback:
    """The webhook of an async job: where, how it went (`none|pending|delivered|failed`), each attempt, and the
    events (`job.started`, `job.progress`) sent besides the final one."""

    url: str
    status: str
    attempts: list[CallbackAttempt]
    events: list[str]


@dataclass(frozen=True)
class Progress:
    """How far a running job is, as its kind last reported: `fraction` 0..1 (None: unknown) and a message."""

    fraction: float | None
    message: str
    updated_at: datetime


@dataclass(frozen=True)
class AttemptLogEntry:
    """One run of a job: its error and whether it was the caller's fault."""

    n: int
    at: datetime
    code: str
    message: str
    callers_fault: bool
    worker: str = ""
    started_at: datetime | None = None


@dataclass(frozen=True)
class Job:
    """A job as the API shows it (sensitive input fields masked). `scheduled` (until `run_at`) and `waiting` (for
    the jobs of `depends_on`) are held: accepted and charged, not queued yet."""

    id: str
    kind: str
    mode: str
    priority: str
    status: str
    input: dict[str, Any]
    result: dict[str, Any] | None
    error: JobError | None
    cost: int
    attempts: int
    attempt_log: list[AttemptLogEntry]
    cached: bool
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    queue_wait_ms: int | None
    run_ms: int | None
    expires_at: datetime | None
    """When the job and its results are deleted (set once final); its URL then answers 410 (`JobExpired`)."""
    run_at: datetime | None
    depends_on: list[str]
    allow_dependency_failure: bool
    progress: Progress | None
    callback: Callback

    @property
    def finished(self) -> bool:
        """True once the job is succeeded, failed or canceled (`canceling` is not final: it is being stopped)."""
        return self.status in FINAL_STATUSES


@dataclass(frozen=True)
class JobEvent:
    """A `status` or `progress` event of a job (event streams, `job.started`/`job.progress` webhooks' data)."""

    id: str
    status: str
    attempts: int
    progress: Progress | None


@dataclass(frozen=True)
class JobWebhookEvent:
    """The body of a `job.started` or `job.progress` webhook."""

    type: str
    timestamp: datetime
    data: JobEvent


@dataclass(frozen=True)
class StreamEvent:
    """One Server-Sent Event of a job's stream: `status` and `progress` (data: a JobEvent), then `job`."""

    event: str
    id: str
    data: dict[str, Any]

    @property
    def job_event(self) -> JobEvent:
        """A `status` or `progress` event's data."""
        return parse(JobEvent, self.data)

    @property
    def job(self) -> Job:
        """The `job` event's data: the final job."""
        return parse(Job, self.data)


@dataclass(frozen=True)
class JobPage:
    """One page of the cursor-paginated job list; `next`/`previous` are URLs or None."""

    results: list[Job]
    next: str | None
    previous: str | None


@dataclass(frozen=True)
class FieldError:
    """One invalid field of a 400 `validation_error`."""

    field: str
    message: str


@dataclass(frozen=True)
class Problem:
    """An RFC 9457 problem+json body; codes may add members (kept in `APIError.body`)."""

    type: str
    title: str
    status: int
    detail: str
    code: str
    errors: list[FieldError] = field(default_factory=list)


@dataclass(frozen=True)
class Balance:
    """The caller's credit balance."""

    balance: int


@dataclass(frozen=True)
class Me:
    """The caller: user, roles, the key's scopes, MFA enrolment and balance."""

    username: str
    is_staff: bool
    roles: list[str]
    scopes: list[str]
    mfa_enrolled: bool
    balance: int


@dataclass(frozen=True)
class RateLimitState:
    """An endpoint's rate limit and what remains of it (`remaining`, `reset` None when not yet used)."""

    algorithm: str
    key: str
    quota: int
    window: int
    remaining: int | None
    reset: int | None


@dataclass(frozen=True)
class Concurrency:
    """An endpoint's concurrency caps (None: no cap) and how many slots are in use."""

    max_per_user: int | None
    max_global: int | None
    in_use_by_you: int
    in_use_global: int


@dataclass(frozen=True)
class EndpointLimits:
    """One endpoint policy's limits as they apply to the caller."""

    name: str
    enabled: bool
    rate_limit: RateLimitState | None
    max_priority: str
    concurrency: Concurrency


@dataclass(frozen=True)
class Limits:
    """Every endpoint's limits and the balance."""

    balance: int
    endpoints: list[EndpointLimits]


@dataclass(frozen=True)
class WebhookSecret:
    """A new webhook signing secret (`whsec_...`), shown once."""

    secret: str


@dataclass(frozen=True)
class WebhookDelivery:
    """One job's webhook in the caller's delivery log: its `webhook-id` (stable across attempts) and every attempt."""

    webhook_id: str
    job_id: str
    url: str
    status: str
    attempts: list[CallbackAttempt]
    created_at: datetime


@dataclass(frozen=True)
class WebhookDeliveryPage:
    """One page of the cursor-paginated delivery log; `next`/`previous` are URLs or None."""

    results: list[WebhookDelivery]
    next: str | None
    previous: str | None


@dataclass(frozen=True)
class WebhookTestResult:
    """What became of a signed test event: `pending` while it was still being sent when the service stopped waiting."""

    webhook_id: str
    status: str
    delivered: bool
    status_code: int | None
    error: str
    duration_ms: int | None


@dataclass(frozen=True)
class RequestCounts:
    """How many of a batch's jobs are in each state."""

    total: int
    waiting: int
    queued: int
    running: int
    succeeded: int
    failed: int
    canceled: int


@dataclass(frozen=True)
class BatchCallback:
    """A batch's one `batch.completed` webhook: where, how it went, its `webhook-id`, each attempt."""

    url: str
    status: str
    webhook_id: str
    attempts: list[CallbackAttempt]


BATCH_FINAL_STATUSES = frozenset({"completed", "canceled"})
"""Batch statuses that never change again (every job of the batch is final)."""


@dataclass(frozen=True)
class Batch:
    """A batch of async jobs: `in_progress|canceling|completed|canceled`, its request counts and timestamps."""

    id: str
    status: str
    request_counts: RequestCounts
    cost: int
    created_at: datetime
    in_progress_at: datetime | None
    canceled_at: datetime | None
    completed_at: datetime | None
    callback: BatchCallback

    @property
    def finished(self) -> bool:
        """True once every job of the batch is final."""
        return self.status in BATCH_FINAL_STATUSES


@dataclass(frozen=True)
class BatchCreated(Batch):
    """The answer to a batch's submission: the batch and its jobs' ids, in the order they were requested."""

    job_ids: list[str]


@dataclass(frozen=True)
class BatchPage:
    """One page of the caller's batches, newest first."""

    results: list[Batch]
    next: str | None
    previous: str | None


@dataclass(frozen=True)
class BatchJob(Job):
    """A job of a batch, with its request's position (`index`, from 0)."""

    index: int


@dataclass(frozen=True)
class BatchJobPage:
    """One page of a batch's jobs, in request order."""

    results: list[BatchJob]
    next: str | None
    previous: str | None


@dataclass(frozen=True)
class Upload:
    """A file being uploaded in chunks (JSONL for a batch, or a job's text input): `offset` of `length` bytes
    received."""

    id: str
    length: int
    offset: int
    created_at: datetime
    expires_at: datetime


@dataclass(frozen=True)
class BatchCompletedEvent:
    """The body of a batch's one webhook: `type` is `batch.completed`, `data` the batch."""

    type: str
    timestamp: datetime
    data: Batch


@dataclass(frozen=True)
class WebhookEvent:
    """A verified webhook delivery: its id (stable across retries), its timestamp and its JSON body."""

    id: str
    timestamp: datetime
    data: dict[str, Any]

    @property
    def job(self) -> Job:
        """The body as a Job (the service's own webhooks; the compatible routes send another shape)."""
        return parse(Job, self.data)

    @property
    def batch_completed(self) -> BatchCompletedEvent:
        """The body as a batch's `batch.completed` event."""
        return parse(BatchCompletedEvent, self.data)
