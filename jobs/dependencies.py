"""Dependencies between jobs (issue 20): the rules (same owner, no cycles, a bounded list) live here, once.

An edge is a JobDependency row (`job` waits for `depends_on`); the job keeps a copy of the ids for reads. A job
that others depend on carries `has_dependents`, so finishing one of the (many) jobs without dependents costs no
query (jobs.execution.job_on_final). Submissions and batches add edges with job_dependencies_add; jobs.holding
moves a waiting job on once its dependencies allow it.
"""

from collections.abc import Sequence
from enum import StrEnum
from typing import NamedTuple
from uuid import UUID

from django.db import connection
from django.db.models import Exists, OuterRef, Q, QuerySet

from jobs.models import FINAL_STATUSES, Job, JobDependency, JobStatus
from jobsite.errors import InvalidInput

DEPENDS_ON_MAX = 100
"""Jobs one job may depend on."""

DEPENDENCY_FAILED = "dependency_failed"
"""Error code of a job failed because a job it depends on failed, was canceled or is gone."""

UNSUCCESSFUL_STATUSES = FINAL_STATUSES - {JobStatus.SUCCEEDED}
"""Final without a result: a dependent of such a job fails unless it allows dependency failure."""


class DependencyState(StrEnum):
    PENDING = "pending"
    """Some dependency is not final yet."""
    SATISFIED = "satisfied"
    """Every dependency succeeded (or, failure allowed, every one is final)."""
    FAILED = "failed"
    """One failed, was canceled or is gone, and the job does not allow it."""


class DependencyCheck(NamedTuple):
    state: DependencyState
    reason: str
    """Why it failed, naming the dependency; empty otherwise."""


def _invalid(message: str) -> InvalidInput:
    return InvalidInput([{"field": "depends_on", "message": message}])


def job_dependencies_add(*, job: Job, depends_on: Sequence[UUID]) -> None:
    """Make `job` wait for the jobs `depends_on`; call in the transaction that records `job`.

    Raises InvalidInput (400, nothing written) for more than DEPENDS_ON_MAX ids, a duplicate, the job itself,
    an id that is not one of the owner's jobs (another user's job is as absent as a missing one), or a cycle
    (possible only when `job` already has dependents, as jobs of one batch may). Locks the dependencies in id
    order, so concurrent submissions naming the same jobs cannot deadlock, and flags them `has_dependents`.
    """
    ids = list(depends_on)
    if not ids:
        return
    if len(ids) > DEPENDS_ON_MAX:
        raise _invalid(f"A job may depend on at most {DEPENDS_ON_MAX} jobs.")
    if len(set(ids)) != len(ids):
        raise _invalid("Each job may be named once.")
    if not connection.in_atomic_block:
        raise RuntimeError("job_dependencies_add must run inside the job-creating transaction")
    owned = Job.objects.select_for_update().filter(pk__in=ids, owner_id=job.owner_id).order_by("pk")
    found = set(owned.values_list("pk", flat=True))
    if missing := [str(pk) for pk in ids if pk not in found]:
        raise _invalid(f"No job of yours has the id {', '.join(missing)}.")
    if job.pk in found or (job.has_dependents and _dependents_reach(job.pk, found)):
        raise _invalid("The dependencies would form a cycle: a job would wait for itself.")
    Job.objects.filter(pk__in=ids, has_dependents=False).update(has_dependents=True)
    JobDependency.objects.bulk_create([JobDependency(job_id=job.pk, depends_on_id=pk) for pk in ids])
    if job.depends_on != (listed := [str(pk) for pk in ids]):  # a submission records them with the job
        job.depends_on = listed
        Job.objects.filter(pk=job.pk).update(depends_on=listed)


def _dependents_reach(start: UUID, targets: set[UUID]) -> bool:
    """Whether any of `targets` waits, directly or not, for `start` (one query per level of the graph)."""
    seen: set[UUID] = set()
    frontier = {start}
    while frontier:
        frontier = set(JobDependency.objects.filter(depends_on_id__in=frontier).values_list("job_id", flat=True)) - seen
        if frontier & targets:
            return True
        seen |= frontier
    return False


def dependency_check(job: Job) -> DependencyCheck:
    """Where a waiting job's dependencies stand (one query)."""
    statuses = dict(Job.objects.filter(pk__in=job.depends_on).values_list("pk", "status"))
    broken = ""
    for pk in job.depends_on:
        status = statuses.get(UUID(pk))
        if status is None or status in UNSUCCESSFUL_STATUSES:
            broken = f"job {pk} it depends on " + ("no longer exists" if status is None else f"is {status}")
            break
    if broken and not job.allow_dependency_failure:
        return DependencyCheck(DependencyState.FAILED, broken)
    if any(status not in FINAL_STATUSES for status in statuses.values()):
        return DependencyCheck(DependencyState.PENDING, "")
    return DependencyCheck(DependencyState.SATISFIED, "")


def waiting_dependents(job_id: UUID) -> list[UUID]:
    """The waiting jobs that depend on this one (one query on the edges' depends_on index)."""
    edges = JobDependency.objects.filter(depends_on_id=job_id, job__status=JobStatus.WAITING)
    return list(edges.values_list("job_id", flat=True))


def waiting_jobs_settleable() -> QuerySet[Job]:
    """Waiting jobs that could move on now: every dependency final, or one unsuccessful that they do not allow."""
    unfinished = JobDependency.objects.filter(job=OuterRef("pk")).exclude(depends_on__status__in=FINAL_STATUSES)
    unsuccessful = JobDependency.objects.filter(job=OuterRef("pk"), depends_on__status__in=UNSUCCESSFUL_STATUSES)
    movable = ~Exists(unfinished) | (Exists(unsuccessful) & Q(allow_dependency_failure=False))
    return Job.objects.filter(movable, status=JobStatus.WAITING)
