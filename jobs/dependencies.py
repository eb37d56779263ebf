"""Dependencies between jobs (issue 20): the rules (same owner, no cycles, a bounded list) live here, once.

An edge is a JobDependency row (`job` waits for `depends_on`); the job keeps a copy of the ids for reads. A job
that others depend on carries `has_dependents`, so finishing one of the (many) jobs without dependents costs no
query (jobs.execution.job_on_final). A submission adds edges with job_dependencies_add; a batch checks its
requests' with batch_dependencies_faults (they may also name each other by index, so a cycle is possible among
them) and adds them with batch_dependencies_add; jobs.holding moves a waiting job on once its dependencies allow.
"""

from collections.abc import Iterable, Sequence
from enum import StrEnum
from graphlib import CycleError, TopologicalSorter
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
    owned = _owned(owner_id=job.owner_id, ids=ids).select_for_update().order_by("pk")
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


BatchDependency = int | UUID
"""What a batch's request may depend on: another request of the batch (its index) or an existing job (its id)."""


def batch_dependencies_faults(*, owner_id: int, depends_on: Sequence[Sequence[BatchDependency]]) -> dict[int, str]:
    """What is wrong with the `depends_on` of each request of a batch (`depends_on[i]` is request i's), by index.

    The rules of job_dependencies_add, plus: an index names another request of the batch, and the requests'
    dependencies on each other form no cycle. One query when job ids are named.
    """
    named = {dependency for entries in depends_on for dependency in entries if isinstance(dependency, UUID)}
    owned = set(_owned(owner_id=owner_id, ids=named).values_list("pk", flat=True)) if named else set()
    faults = {
        index: fault
        for index, entries in enumerate(depends_on)
        if (fault := _batch_entries_fault(index, entries, total=len(depends_on), owned=owned))
    }
    if faults:
        return faults
    graph = {index: [entry for entry in entries if isinstance(entry, int)] for index, entries in enumerate(depends_on)}
    try:
        tuple(TopologicalSorter(graph).static_order())
    except CycleError as exc:
        cycle: list[int] = exc.args[1]  # first and last the same
        return dict.fromkeys(cycle[:-1], "The requests' dependencies form a cycle: " + " -> ".join(map(str, cycle)))
    return {}


def _batch_entries_fault(index: int, entries: Sequence[BatchDependency], *, total: int, owned: set[UUID]) -> str:
    """What is wrong with one request's depends_on, or empty."""
    if len(entries) > DEPENDS_ON_MAX:
        return f"A job may depend on at most {DEPENDS_ON_MAX} jobs."
    if len(set(entries)) != len(entries):
        return "Each job may be named once."
    if out_of_range := [str(e) for e in entries if isinstance(e, int) and not 0 <= e < total]:
        return f"No request of this batch has the index {', '.join(out_of_range)} (0 to {total - 1})."
    if index in entries:
        return "A request cannot depend on itself."
    if missing := [str(e) for e in entries if isinstance(e, UUID) and e not in owned]:
        return f"No job of yours has the id {', '.join(missing)}."
    return ""


def batch_dependencies_add(*, jobs: Sequence[Job], depends_on: Sequence[Sequence[BatchDependency]]) -> set[UUID]:
    """Record the dependencies of a batch's jobs, found faultless by batch_dependencies_faults; call in the
    transaction that records `jobs` (request order), before their INSERT: it sets their `depends_on` and
    `has_dependents`. Returns the named existing jobs that are final already: their dependents need settling
    after commit (the others, locked here, settle their dependents when they finish).

    The named jobs are locked in id order and flagged `has_dependents` as job_dependencies_add does (two
    statements, only when some are named); the edges are one multi-row INSERT after the jobs'
    (batch_dependency_edges_insert).
    """
    if not connection.in_atomic_block:
        raise RuntimeError("batch_dependencies_add must run inside the job-creating transaction")
    named = sorted({dependency for entries in depends_on for dependency in entries if isinstance(dependency, UUID)})
    final: set[UUID] = set()
    if named:
        locked = dict(
            _owned(owner_id=jobs[0].owner_id, ids=named).select_for_update().order_by("pk").values_list("pk", "status")
        )
        if gone := [str(pk) for pk in named if pk not in locked]:  # deleted since the check (retention)
            raise _invalid(f"No job of yours has the id {', '.join(gone)}.")
        Job.objects.filter(pk__in=named, has_dependents=False).update(has_dependents=True)
        final = {pk for pk, status in locked.items() if status in FINAL_STATUSES}
    for job, entries in zip(jobs, depends_on, strict=True):
        job.depends_on = [str(jobs[entry].pk if isinstance(entry, int) else entry) for entry in entries]
        for entry in entries:
            if isinstance(entry, int):
                jobs[entry].has_dependents = True
    return final


def batch_dependency_edges_insert(jobs: Iterable[Job]) -> None:
    """The edges of a batch's jobs (their `depends_on`, set by batch_dependencies_add), in one multi-row INSERT."""
    edges = [JobDependency(job_id=job.pk, depends_on_id=UUID(pk)) for job in jobs for pk in job.depends_on]
    if edges:
        JobDependency.objects.bulk_create(edges)


def dependents_first(jobs: Iterable[Job]) -> list[Job]:
    """The jobs ordered so that each comes before those of them it waits for (by their `depends_on`)."""
    by_id = {str(job.pk): job for job in jobs}
    graph = {key: [pk for pk in job.depends_on if pk in by_id] for key, job in by_id.items()}
    return [by_id[key] for key in reversed(tuple(TopologicalSorter(graph).static_order()))]


def _owned(*, owner_id: int, ids: Iterable[UUID]) -> QuerySet[Job]:
    return Job.objects.filter(pk__in=list(ids), owner_id=owner_id)


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
