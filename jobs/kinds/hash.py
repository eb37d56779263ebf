"""`hash`: CPU-bound iterated SHA-256, the original backend's compute_work bit for bit."""

import hashlib
from typing import Any

from django.conf import settings
from django.core.validators import RegexValidator
from rest_framework import serializers

from jobs.kinds.base import Kind, RunContext
from jobsite.fields import StrictCharField, StrictIntegerField

MAX_DATA_CHARS = 10_000
"""Longest `data` accepted."""

MAX_ITERATIONS = settings.HASH_MAX_ITERATIONS
"""Most iterations accepted (default 1 000 000: about a second of CPU on one core)."""

DATA_PATTERN = r"^(?=\s*\S)[^\x00]*$"
"""`data`: not blank (some non-whitespace character) and without NUL characters."""


class HashInput(serializers.Serializer):
    # trim_whitespace off: the hash must cover `data` exactly as sent.
    data = StrictCharField(  # type: ignore[assignment]  # a field: DRF's metaclass leaves the property
        min_length=1,
        max_length=MAX_DATA_CHARS,
        trim_whitespace=False,
        validators=[RegexValidator(DATA_PATTERN, message="This field may not be blank or hold null characters.")],
    )
    iterations = StrictIntegerField(min_value=1, max_value=MAX_ITERATIONS, default=1000)


STEP_ITERATIONS = 10_000
"""Iterations of one step, between which the deadline is checked and progress reported: about 10 ms of CPU,
a negligible cost per check."""


def compute_hash(data: str, iterations: int, context: RunContext | None = None) -> dict[str, Any]:
    input_hash = hashlib.sha256(data.encode("utf-8")).hexdigest()
    current = input_hash
    for step in range(0, iterations, STEP_ITERATIONS):
        if context is not None:
            context.deadline.check()
            context.report_progress(step / iterations, f"{step} of {iterations} iterations")
        # The inner loop checks nothing: a check on every iteration cost ~7% of a run's CPU.
        for i in range(step, min(step + STEP_ITERATIONS, iterations)):
            current = hashlib.sha256(f"{current}:{i}".encode()).hexdigest()
    return {"input_hash": input_hash, "output_hash": current, "iterations": iterations}


def run(params: dict[str, Any], context: RunContext) -> dict[str, Any]:
    return compute_hash(params["data"], params["iterations"], context)


KIND = Kind(
    name="hash",
    serializer_class=HashInput,
    run=run,
    cost=1,
    cacheable=True,
    public_results=True,
    does_io=False,
    time_limit=30,
    upload_field="data",
)
