"""jobs.worker.ResilientWorker's own bookkeeping in Redis: what RQ's loop repeats per job is sent once."""

import pytest
from rest_framework.test import APIClient
from rq.suspension import resume, suspend

from bench.overhead import redis_round_trips
from jobs import queues, worker
from jobs.models import Job, JobStatus
from jobs.pools import PoolQueue
from jobs.worker import ResilientWorker


@pytest.fixture
def rq_worker() -> ResilientWorker:
    queue = queues.get_queue(queues.JOBS_QUEUE)
    return ResilientWorker([queue], connection=queue.connection, queue_class=PoolQueue)


def test_a_heartbeat_is_one_round_trip_and_not_repeated_within_the_interval(rq_worker: ResilientWorker) -> None:
    with redis_round_trips() as trips:
        rq_worker.heartbeat()
        rq_worker.heartbeat()  # RQ's next beat, moments later: the registration has 480 s to live
    assert trips == ["pipeline[HSET EXPIRE EXPIRE]"]
    assert 470 < rq_worker.connection.ttl(rq_worker.key) <= rq_worker.worker_ttl + 60

    with redis_round_trips() as trips:
        rq_worker.heartbeat(1000)  # a longer life is never skipped
    assert trips == ["pipeline[HSET EXPIRE EXPIRE]"]
    assert rq_worker.connection.ttl(rq_worker.key) > 990


def test_a_heartbeat_after_the_interval_is_sent(rq_worker: ResilientWorker, monkeypatch: pytest.MonkeyPatch) -> None:
    rq_worker.heartbeat()
    monkeypatch.setattr(worker, "HEARTBEAT_MIN_INTERVAL", 0.0)
    with redis_round_trips() as trips:
        rq_worker.heartbeat()
    assert trips == ["pipeline[HSET EXPIRE EXPIRE]"]


def test_a_state_carries_a_heartbeat_and_is_written_once(rq_worker: ResilientWorker) -> None:
    with redis_round_trips() as trips:
        rq_worker.set_state("idle")
        rq_worker.heartbeat()  # what RQ sends after a job's "idle": carried already
        rq_worker.set_state("idle")  # RQ's second "idle", before its next dequeue
        rq_worker.set_state("busy")
    assert trips == ["pipeline[HSET HSET EXPIRE EXPIRE EXISTS]"] * 2  # and RQ's suspension flag, read next
    assert rq_worker.connection.hget(rq_worker.key, "state") == b"busy"
    assert rq_worker.connection.ttl(rq_worker.key) > 470


@pytest.mark.django_db(transaction=True)
def test_a_worker_running_jobs_beats_without_a_round_trip_per_command(
    api: APIClient, rq_worker: ResilientWorker
) -> None:
    for data in ("a", "b", "c"):
        response = api.post("/api/v1/jobs/async/", {"kind": "hash", "input": {"data": data}}, format="json")
        assert response.status_code == 202, response.content

    with redis_round_trips() as trips:
        assert rq_worker.work(burst=True, with_scheduler=False)

    assert Job.objects.filter(status=JobStatus.SUCCEEDED).count() == 3
    # RQ sent its heartbeat (HSET last_heartbeat, EXPIRE, EXPIRE) a command per round trip, 3 times per job
    assert "EXPIRE" not in trips
    # the worker's "started" and first "idle", then each job's "idle", each with a heartbeat and the suspension flag;
    # RQ's next heartbeats are skipped, and so are its suspension checks (a heartbeat and EXISTS) before each dequeue
    assert trips.count("pipeline[HSET HSET EXPIRE EXPIRE EXISTS]") == 2 + 3
    assert "pipeline[HSET EXPIRE EXPIRE EXISTS]" not in trips
    assert "HSET" not in trips  # RQ's heartbeat of each job as it ends, alone: its field is saved with the job
    # Each success is one MULTI: RQ's WATCH and read of the job's RQ dependents before it are not sent.
    assert "WATCH" not in trips
    assert sum(trip.startswith("pipeline[HINCRBY HINCRBYFLOAT") for trip in trips) == 3
    assert rq_worker.connection.ttl(rq_worker.key) > 0


@pytest.mark.django_db(transaction=True)
def test_a_suspended_worker_runs_nothing(api: APIClient, rq_worker: ResilientWorker) -> None:
    assert api.post("/api/v1/jobs/async/", {"kind": "hash", "input": {"data": "a"}}, format="json").status_code == 202
    suspend(rq_worker.connection)
    try:
        assert not rq_worker.work(burst=True, with_scheduler=False)  # RQ's burst mode leaves when suspended
    finally:
        resume(rq_worker.connection)
    assert Job.objects.get().status == JobStatus.QUEUED
