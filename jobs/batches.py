"""Batches: many async jobs validated, admitted, charged and recorded as one, then tracked and canceled as one.

A batch is all or nothing: every request is validated first (one 400 listing each bad request by index, or
each bad line of an upload by number), the whole cost is charged at once (one 402 for the total), and the
batch row, its job rows (one multi-row INSERT), the slots and the ledger entries (one per job, so each job is
refunded alone) commit in one transaction; the jobs are enqueued after commit in one Redis round trip.
Batches skip the result cache and the submission-time circuit check: their jobs run later in workers, which
check the circuit again (a job refused there fails `circuit_open`, refunded).

A request may name `depends_on`: indexes of other requests of the batch, or ids of the owner's jobs
(jobs.dependencies checks them with the rest of the batch, so a bad one is in the same 400). Such a job is
recorded `waiting` without a concurrency slot, its edges inserted in the same transaction, and moves on as a
single job's dependencies move it (jobs.holding); one that names a job final already is settled after commit.
"""

import json
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from django.conf import settings
from django.db import transaction
from django.utils import timezone
from rest_framework import serializers

from accounts.models import EndpointPolicy, User
from credits.services import JobCharge, credit_charge_jobs
from jobs import metrics, queues
from jobs.batch_progress import batch_complete
from jobs.concurrency import concurrency_admit
from jobs.dependencies import (
    BatchDependency,
    batch_dependencies_add,
    batch_dependencies_faults,
    batch_dependency_edges_insert,
    dependents_first,
)
from jobs.encryption import open_result, seal_input
from jobs.execution import job_held_settle
from jobs.export import stream_chunks
from jobs.idempotency import idempotency_bind_job
from jobs.kind_settings import get_kind_settings
from jobs.kinds import KINDS
from jobs.models import FINAL_STATUSES, Batch, BatchStatus, CallbackStatus, Job, JobMode, JobStatus
from jobs.pipeline import callback_url_check, priority_admit, queue_admit
from jobs.selectors import batch_get
from jobs.serializers import BATCH_ITEM, JobRequestSerializer
from jobs.services import job_cancel_unstarted
from jobs.uploads import upload_consume, upload_input_take, upload_lines
from jobs.webhooks import batch_webhooks_requeue_lost
from jobsite.db import keyset_batches
from jobsite.errors import InvalidInput, NotCancellable, NotFound
from jobsite.tracing import inject_context


@dataclass(frozen=True)
class BatchJobRequest:
    """One validated job request of a batch."""

    kind: str
    params: dict[str, Any]
    depends_on: tuple[BatchDependency, ...] = ()
    allow_dependency_failure: bool = False
    upload_id: UUID | None = None
    """The upload its input was read from (jobs.uploads.upload_input_take), consumed with the batch."""


def _validated(raw: Any, *, user: User) -> BatchJobRequest:
    envelope = JobRequestSerializer(data=raw, context={"mode": BATCH_ITEM})
    envelope.is_valid(raise_exception=True)
    data = envelope.validated_data
    params, upload_id = upload_input_take(user=user, kind=KINDS[data["kind"]], params=data["input"])
    return BatchJobRequest(
        kind=data["kind"],
        params=params,
        upload_id=upload_id,
        depends_on=tuple(data.get("depends_on", ())),
        allow_dependency_failure=data.get("allow_dependency_failure", False),
    )


def batch_requests_validate(
    raw: Iterable[tuple[int, Any]], *, user: User, label: str, max_jobs: int
) -> list[BatchJobRequest]:
    """Validate (position, request) pairs with the single job's serializers, then their dependencies on each other
    and on the user's jobs; one 400 lists every bad one. An input naming an upload of the user's gets its text (a
    missing, incomplete or too large one refuses the batch).

    `label` names the position in the errors' field paths: `requests.3.input.data`, `line.4.kind`.
    """
    requests: list[BatchJobRequest] = []
    positions: list[int] = []
    errors: dict[str, Any] = {}
    for position, item in raw:
        if len(requests) + len(errors) >= max_jobs:
            raise InvalidInput(
                [{"field": label, "message": f"A batch holds at most {max_jobs} job requests (policy batch_max_jobs)."}]
            )
        if isinstance(item, NotJson):
            errors[str(position)] = [f"Not JSON: {item.reason}."]
            continue
        try:
            requests.append(_validated(item, user=user))
            positions.append(position)
        except serializers.ValidationError as exc:
            errors[str(position)] = exc.detail
    if not errors and any(request.depends_on for request in requests):
        faults = batch_dependencies_faults(owner_id=user.pk, depends_on=[request.depends_on for request in requests])
        errors = {str(positions[index]): {"depends_on": [fault]} for index, fault in sorted(faults.items())}
    if errors:
        raise serializers.ValidationError({label: errors})
    if not requests:
        raise InvalidInput([{"field": label, "message": "A batch holds at least one job request."}])
    return requests


@dataclass(frozen=True)
class NotJson:
    """A line of an upload that does not parse as JSON: reported with the line's number, like any bad request."""

    reason: str


def jsonl_requests(lines: Iterator[tuple[int, bytes]]) -> Iterator[tuple[int, Any]]:
    """(line number, parsed JSON) per non-blank line of a JSONL file; a line that does not parse gives NotJson."""
    for number, line in lines:
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except ValueError as exc:  # UnicodeDecodeError included
            yield number, NotJson(str(exc))


def batch_submit(
    *,
    user: User,
    policy: EndpointPolicy,
    requests: list[BatchJobRequest],
    callback_url: str = "",
    upload_id: UUID | None = None,
) -> Batch:
    """Admit, charge and record a validated batch in one transaction, then enqueue its jobs after commit.

    The upload it was made from (if any) and those its jobs' inputs were read from are deleted in the same
    transaction: the jobs hold their inputs now.
    """
    callback_url_check(callback_url)
    priority = priority_admit(policy)
    kinds = {name: get_kind_settings(name) for name in {request.kind for request in requests}}
    pools = {name: queues.job_pool(kind_settings) for name, kind_settings in kinds.items()}
    for pool in set(pools.values()):
        queue_admit(policy, pool=pool)
    now, trace_context = timezone.now(), inject_context()
    queued = sum(not request.depends_on for request in requests)  # the jobs that take a slot now
    with transaction.atomic():
        holds_slot = bool(queued) and concurrency_admit(user=user, policy=policy, jobs=queued)
        batch = Batch.objects.create(
            owner=user,
            endpoint=policy.name,
            total=len(requests),
            cost=sum(kinds[request.kind].cost for request in requests),
            created_at=now,
            callback_url=callback_url,
            callback_status=CallbackStatus.PENDING if callback_url else CallbackStatus.NONE,
            trace_context=trace_context,
        )
        jobs = [
            Job(
                owner=user,
                endpoint=policy.name,
                kind=request.kind,
                mode=JobMode.ASYNC,
                input=seal_input(kinds[request.kind], request.params),
                cost=kinds[request.kind].cost,
                created_at=now,
                trace_context=trace_context,
                priority=priority,
                pool=pools[request.kind],
                status=JobStatus.WAITING if request.depends_on else JobStatus.QUEUED,
                holds_slot=holds_slot and not request.depends_on,  # a waiting job takes its slot at release
                allow_dependency_failure=request.allow_dependency_failure,
                batch=batch,
                batch_index=index,
            )
            for index, request in enumerate(requests)
        ]
        final_named: set[UUID] = set()
        if queued < len(jobs):  # locks the named jobs before the charge, as a single submission does
            final_named = batch_dependencies_add(jobs=jobs, depends_on=[request.depends_on for request in requests])
        Job.objects.bulk_create(jobs)
        batch_dependency_edges_insert(jobs)
        charged = credit_charge_jobs(
            user_id=user.pk, charges=[JobCharge(job.id, job.cost, f"{job.kind} job") for job in jobs]
        )
        idempotency_bind_job(jobs[0])  # its batch answers the key if this request dies
        consumed = {request.upload_id for request in requests if request.upload_id is not None}
        for uploaded in sorted(consumed | ({upload_id} if upload_id is not None else set())):  # a fixed lock order
            upload_consume(user=user, upload_id=uploaded)
        queues.enqueue_jobs_on_commit(
            [(job, kinds[job.kind].time_limit) for job in jobs if job.status == JobStatus.QUEUED]
        )
    for job, request in zip(jobs, requests, strict=True):
        if final_named.intersection(request.depends_on):  # no finish will come to settle it
            job_held_settle(job_id=job.pk)
    metrics.CREDITS.labels(type="charged").inc(charged)
    for kind, count in Counter(request.kind for request in requests).items():
        metrics.JOBS_SUBMITTED.labels(kind=kind, mode=JobMode.ASYNC).inc(count)
    batch.job_ids = [job.id for job in jobs]  # type: ignore[attr-defined]  # for the 202 answer only
    batch.waiting = len(jobs) - queued  # type: ignore[attr-defined]  # as accepted, for the 202 answer only
    return batch


def batch_submit_upload(*, user: User, policy: EndpointPolicy, upload_id: UUID, callback_url: str = "") -> Batch:
    """A batch from a complete upload: one job request a JSONL line, validated line by line (errors by line number)."""
    lines = upload_lines(user=user, upload_id=upload_id)
    requests = batch_requests_validate(jsonl_requests(lines), user=user, label="line", max_jobs=policy.batch_max_jobs)
    return batch_submit(user=user, policy=policy, requests=requests, callback_url=callback_url, upload_id=upload_id)


def batch_cancel(*, user: User, batch_id: UUID) -> Batch:
    """Cancel every job of the batch that has not started, queued or waiting (each refunded as job_cancel refunds
    one); running jobs finish. The batch is `canceling` until its last job is final, then `canceled`.

    Each job is canceled in a transaction of its own, which locks the job and then the batch row (its counter),
    the order a worker's finish takes them in: one transaction over all of them, holding the batch row while it
    waits for a job a worker is finishing, would deadlock with that worker.
    """
    batch = batch_get(user=user, batch_id=batch_id)
    if batch is None:
        raise NotFound("No such batch.")
    marked = Batch.objects.filter(pk=batch.pk, canceled_at__isnull=True, completed_at__isnull=True).update(
        canceled_at=timezone.now(), status=BatchStatus.CANCELING
    )
    if not marked:
        raise NotCancellable(f"The batch is {batch.status}; only a batch in progress can be canceled.")
    unstarted = Job.objects.filter(batch=batch, status__in=[JobStatus.WAITING, JobStatus.QUEUED])
    # A dependent before its dependency: canceled, not failed dependency_failed by the cancel of what it waits for.
    for job in dependents_first(unstarted.order_by("batch_index").only("pk", "status", "depends_on")):
        with transaction.atomic():  # each is read again by its own cancel
            job_cancel_unstarted(job)  # the last job to become final completes the batch, as canceled
    canceled = batch_get(user=user, batch_id=batch.pk)
    assert canceled is not None  # batches are deleted only when purged, long after they completed
    return canceled


RESULTS_CHUNK = 500
"""Jobs read per cursor fetch while streaming a batch's results."""


def batch_results_jsonl(batch: Batch) -> Iterator[str]:
    """The batch's results as JSON lines in request order, `{id, index, status, result, error}`, streamed from one
    cursor (bounded memory whatever the batch's size)."""
    rows = (
        Job.objects.filter(batch=batch)
        .order_by("batch_index")
        .values_list("id", "batch_index", "status", "result", "error_code", "error_message")
    )
    for chunk in stream_chunks(rows, chunk_size=RESULTS_CHUNK, what="batch results"):
        yield "".join(
            json.dumps(
                {
                    "id": str(job_id),
                    "index": index,
                    "status": status,
                    "result": open_result(result),
                    "error": {"code": code, "message": message} if code else None,
                },
                separators=(",", ":"),
            )
            + "\n"
            for job_id, index, status, result, code, message in chunk
        )


def batches_reconcile(*, now: datetime | None = None) -> dict[str, int]:
    """Complete open batches whose every job is final but whose counters missed it (a counter that drifted):
    the counters are recounted from the jobs first; old enough only (a batch being created is not touched).
    Then enqueue the batch deliveries that lost their RQ job."""
    now = now or timezone.now()
    cutoff = now - timedelta(seconds=settings.RECONCILE_QUEUED_GRACE)
    completed = 0
    open_batches = Batch.objects.filter(completed_at__isnull=True, created_at__lt=cutoff).values("pk", "created_at")
    for page in keyset_batches(open_batches, field="created_at", size=500):
        for row in page:
            if Job.objects.filter(batch_id=row["pk"]).exclude(status__in=FINAL_STATUSES).exists():
                continue
            with transaction.atomic():
                counts = Counter(Job.objects.filter(batch_id=row["pk"]).values_list("status", flat=True))
                Batch.objects.filter(pk=row["pk"]).update(
                    succeeded=counts[JobStatus.SUCCEEDED],
                    failed=counts[JobStatus.FAILED],
                    canceled=counts[JobStatus.CANCELED],
                )
                completed += batch_complete(batch_id=row["pk"])
    return {"batches_completed": completed, "batch_callbacks_requeued": batch_webhooks_requeue_lost(now)}
