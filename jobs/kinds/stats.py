"""`stats`: DB-bound aggregate figures over the caller's own jobs."""

from typing import Any

from rest_framework import serializers

from jobs.kinds.base import Kind, RunContext
from jobs.selectors import job_stats_for_owner


class StatsInput(serializers.Serializer):
    """No parameters: the figures are always over the caller's own jobs."""


def run(params: dict[str, Any], context: RunContext) -> dict[str, Any]:
    context.deadline.check()  # one aggregate query: checked before it; RQ's job timeout backs it in workers
    return job_stats_for_owner(owner_id=context.owner_id)


KIND = Kind(
    name="stats",
    serializer_class=StatsInput,
    run=run,
    cost=1,
    cacheable=False,
    does_io=False,
    time_limit=30,
)
