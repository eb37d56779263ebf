"""The test session flushes its Redis database before every test: only one it owns, never someone's data."""

import redis

OWNER_KEY = "jobsite-test:owner"
"""Written by the test session into the database it flushes; a database with keys but without it is not ours."""
OWNER_VALUE = b"jobsite test suite: flushed before every test"


def claim_test_database(client: redis.Redis) -> str | None:
    """Mark the database as the test session's; None when it may be flushed, else why it must not be."""
    if client.get(OWNER_KEY) == OWNER_VALUE or client.dbsize() == 0:
        client.set(OWNER_KEY, OWNER_VALUE)
        return None
    where = client.connection_pool.connection_kwargs
    return (
        f"refusing to flush Redis database {where.get('db', 0)} at {where.get('host')}:{where.get('port')}: "
        f"it holds {client.dbsize()} key(s) and no {OWNER_KEY} marker, so they are not a test run's. "
        "Point TEST_REDIS_URL at an empty database (or FLUSHDB it yourself if its data is expendable)."
    )


def flush_test_database(client: redis.Redis) -> None:
    """Empty the (claimed) database, keeping the marker so that the next session knows it as ours."""
    client.flushdb()
    client.set(OWNER_KEY, OWNER_VALUE)
