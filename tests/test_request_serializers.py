"""Submission serializers lend their fields from one validation to the next of the same thread
(jobs.serializers.FieldsPerThreadSerializer): nothing of one submission may reach another."""

import threading
from typing import Any

from jobs.models import JobMode
from jobs.serializers import KIND_REQUESTS, JobRequestSerializer


def validate(body: dict[str, Any], mode: str = JobMode.ASYNC) -> tuple[bool, Any]:
    serializer = JobRequestSerializer(data=body, context={"mode": mode})
    valid = serializer.is_valid()
    return valid, serializer.validated_data if valid else serializer.errors


def test_one_thread_validates_one_submission_after_another_without_carrying_anything_over() -> None:
    request_class = KIND_REQUESTS[JobMode.ASYNC]["hash"]
    assert request_class(data={}).fields is request_class(data={}).fields  # lent, not rebuilt

    refused, errors = validate({"kind": "hash", "input": {"data": "x", "iterations": 0}, "priority": "nope"})
    assert not refused and set(errors) >= {"input", "priority"}, errors

    accepted, data = validate({"kind": "hash", "input": {"data": "y", "iterations": 3}})
    assert accepted, data
    assert data["input"] == {"data": "y", "iterations": 3} and "priority" not in data and data["callback_url"] == ""

    with_callback, data = validate(
        {"kind": "hash", "input": {"data": "z", "iterations": 2}, "callback_url": "http://127.0.0.1:9/hook"}
    )
    assert with_callback and data["callback_url"] == "http://127.0.0.1:9/hook"
    again, data = validate({"kind": "hash", "input": {"data": "y", "iterations": 3}})
    assert again and data["callback_url"] == "" and data["input"] == {"data": "y", "iterations": 3}


def test_threads_validating_at_once_each_get_their_own_answer() -> None:
    start = threading.Barrier(8)
    outcomes: dict[int, list[tuple[bool, Any]]] = {}

    def submit(n: int) -> None:
        start.wait()
        outcomes[n] = [
            validate({"kind": "hash", "input": {"data": f"thread-{n}-{i}", "iterations": n + 1}}) for i in range(50)
        ] + [validate({"kind": "hash", "input": {"data": f"thread-{n}", "iterations": -n}})]

    threads = [threading.Thread(target=submit, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    for n, results in outcomes.items():
        *accepted, refused = results
        assert [data["input"] for _, data in accepted] == [
            {"data": f"thread-{n}-{i}", "iterations": n + 1} for i in range(50)
        ]
        assert all(valid for valid, _ in accepted)
        assert not refused[0] and "iterations" in refused[1]["input"], refused
    assert len(outcomes) == 8
