"""What a job kind is: one small module registers one of these."""

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rest_framework import serializers

from jobs.deadline import Deadline


class KindError(Exception):
    """A kind could not produce a result.

    `transient` failures (the outside world misbehaved) may be retried and count against the
    circuit breaker; the others are final and, when the input was at fault, not refunded.
    """

    def __init__(self, code: str, message: str, *, transient: bool = False, callers_fault: bool = False):
        super().__init__(message)
        self.code = code
        self.message = message
        self.transient = transient
        self.callers_fault = callers_fault


@dataclass(frozen=True)
class RunContext:
    """What a kind may know about the job it runs for."""

    owner_id: int
    job_id: str
    deadline: Deadline = field(default_factory=Deadline.never)
    """Ends the run: I/O is held to it (Deadline.http_watch), CPU kinds check it between steps."""
    progress: Callable[[float | None, str], None] | None = None
    """Receives report_progress (async runs: jobs.progress.ProgressReporter, which throttles); None: no one."""

    def report_progress(self, fraction: float | None, message: str = "") -> None:
        """How far the run is, at a step boundary: `fraction` of the work done (0..1; None: unknown) and a short
        message. Cheap to call often: the receiver throttles what it records."""
        if self.progress is not None:
            self.progress(fraction, message)


@dataclass(frozen=True)
class Kind:
    name: str
    serializer_class: type[serializers.Serializer]
    run: Callable[[dict[str, Any], RunContext], dict[str, Any]]
    cost: int
    cacheable: bool
    """Staff may turn the result cache on for it (KindSettings.cache_algorithm)."""
    does_io: bool
    time_limit: int
    retries: int = 0
    sensitive_fields: tuple[str, ...] = field(default=())
    public_results: bool = False
    """A pure function of its input: one cache entry serves every user. Otherwise entries are per owner."""
    circuit_target: Callable[[dict[str, Any]], str] | None = None
    """The upstream a job talks to (e.g. its URL's host), given its validated input: one circuit breaker
    each (jobs.circuit). None: the kind has no upstream and no breaker."""
    upload_field: str | None = None
    """The text input field a submission may replace with `upload_id` (the caller's complete upload, read as
    UTF-8: jobs.uploads.upload_input_take). None: the kind's input is inline only."""
