"""The per-request profile of bench/overhead.py counts what it says: Redis round trips and SQL statements."""

import pytest
from django.core.handlers.wsgi import WSGIHandler
from django.db import connection
from redis.client import Pipeline, Redis

from accounts.models import SCOPES
from accounts.services import api_key_create
from bench import request_cpu
from bench.overhead import TRANSACTION_CONTROL, profile_sync, redis_round_trips
from credits.services import credit_grant
from jobs import queues
from jobs.models import Job, JobStatus
from jobsite.redis import get_redis, redis_key
from tests.access_helpers import open_compat_to_anonymous


def test_redis_round_trips_count_each_command_and_a_pipeline_once():
    redis = get_redis()
    original = Redis.execute_command, Pipeline.execute, Pipeline.immediate_execute_command

    with redis_round_trips() as trips:
        redis.set(redis_key("bench", "a"), 1)
        pipeline = redis.pipeline()
        pipeline.incr(redis_key("bench", "a"))
        pipeline.get(redis_key("bench", "a"))
        assert pipeline.execute() == [2, b"2"]
        with redis.pipeline() as watching:
            watching.watch(redis_key("bench", "a"))  # sent at once, ahead of the pipeline
            watching.multi()
            watching.get(redis_key("bench", "a"))
            assert watching.execute() == [b"2"]

    assert trips == ["SET", "pipeline[INCRBY GET]", "WATCH", "pipeline[GET]"]  # redis-py sends INCR as INCRBY
    assert (Redis.execute_command, Pipeline.execute, Pipeline.immediate_execute_command) == original
    redis.get(redis_key("bench", "a"))
    assert len(trips) == 4  # nothing counted once the block is left


@pytest.mark.django_db(transaction=True)
def test_profile_of_a_sync_job_sees_its_statements_and_transaction(user):
    _, raw_key = api_key_create(owner=user, name="bench", scopes=list(SCOPES))
    credit_grant(user=user, amount=1000, reason="bench")

    profile = profile_sync(raw_key, requests=3)

    statements = profile["statements"]
    # The job's and the charge's INSERTs: statements of one transaction on SQLite; on PostgreSQL parts of the one
    # acceptance statement, in autocommit like the success's finish, so a sync job there has no BEGIN or COMMIT.
    assert any('INSERT INTO "jobs_job"' in statement for statement in statements)
    assert any("INSERT INTO credits_ledgerentry" in statement.replace('"', "") for statement in statements)
    control = [statement for statement in statements if statement.upper().startswith(TRANSACTION_CONTROL)]
    assert control[-1:] == ([] if connection.vendor == "postgresql" else ["COMMIT"])
    assert profile["sql_statements"] == len(statements) - len(control) > 0
    assert profile["database_round_trips"] == len(statements)
    assert profile["redis_round_trips"] == len(profile["redis_commands"]) > 0


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("route", ["compat_sync", "api_async"])
def test_request_cpu_runs_a_route_through_the_wsgi_handler_and_counts_its_round_trips(user, settings, route):
    settings.CALLBACK_ALLOW_PRIVATE = True
    open_compat_to_anonymous()
    _, raw_key = api_key_create(owner=user, name="bench", scopes=list(SCOPES))
    credit_grant(user=user, amount=1000, reason="bench")

    figures = request_cpu.measure(WSGIHandler(), request_cpu.ROUTES[route], raw_key, 3)

    assert any('INSERT INTO "jobs_job"' in statement for statement in figures["statements"])
    assert figures["database_round_trips"] == len(figures["statements"]) >= figures["sql_statements"] > 0
    assert figures["redis_round_trips"] == len(figures["redis_commands"]) > 0
    assert 0 < figures["cpu_ms_median"] <= figures["wall_ms_p50"] * 2
    assert Job.objects.filter(status=JobStatus.SUCCEEDED if route == "compat_sync" else JobStatus.QUEUED).count() == 24
    assert queues.get_queue(queues.JOBS_QUEUE).count == 0  # async: emptied after every request, no worker needed
