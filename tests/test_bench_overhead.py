"""The per-request profile of bench/overhead.py counts what it says: Redis round trips and SQL statements."""

import pytest
from redis.client import Pipeline, Redis

from accounts.models import SCOPES
from accounts.services import api_key_create
from bench.overhead import TRANSACTION_CONTROL, profile_sync, redis_round_trips
from credits.services import credit_grant
from jobsite.redis import get_redis, redis_key


def test_redis_round_trips_count_each_command_and_a_pipeline_once():
    redis = get_redis()
    original = Redis.execute_command, Pipeline.execute

    with redis_round_trips() as trips:
        redis.set(redis_key("bench", "a"), 1)
        pipeline = redis.pipeline()
        pipeline.incr(redis_key("bench", "a"))
        pipeline.get(redis_key("bench", "a"))
        assert pipeline.execute() == [2, b"2"]

    assert trips == ["SET", "pipeline[INCRBY GET]"]  # redis-py sends INCR as INCRBY
    assert (Redis.execute_command, Pipeline.execute) == original
    redis.get(redis_key("bench", "a"))
    assert len(trips) == 2  # nothing counted once the block is left


@pytest.mark.django_db(transaction=True)
def test_profile_of_a_sync_job_sees_its_statements_and_transaction(user):
    _, raw_key = api_key_create(owner=user, name="bench", scopes=list(SCOPES))
    credit_grant(user=user, amount=1000, reason="bench")

    profile = profile_sync(raw_key, requests=3)

    statements = profile["statements"]
    assert any(statement.startswith('INSERT INTO "jobs_job"') for statement in statements)
    assert any(statement.startswith('INSERT INTO "credits_ledgerentry"') for statement in statements)
    control = [statement for statement in statements if statement.upper().startswith(TRANSACTION_CONTROL)]
    assert control and control[-1] == "COMMIT"
    assert profile["sql_statements"] == len(statements) - len(control) > 0
    assert profile["database_round_trips"] == len(statements)
    assert profile["redis_round_trips"] == len(profile["redis_commands"]) > 0
