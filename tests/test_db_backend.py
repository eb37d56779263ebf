"""jobsite.postgresql: the per-request connection health check without a round trip, and a connection the server
ended still replaced before the request's first statement (CONN_HEALTH_CHECKS' promise)."""

import time

import psycopg
import pytest
from django.db import connection

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(
        connection.vendor != "postgresql", reason="PostgreSQL's backend: SQLite's health check asks nothing of its file"
    ),
]


def _server() -> psycopg.Connection:
    """A connection of the test's own to the test database, to watch and end the service's."""
    settings = connection.settings_dict
    return psycopg.connect(
        dbname=settings["NAME"], user=settings["USER"], host=settings["HOST"], port=settings["PORT"], autocommit=True
    )


def _request_starts_and_opens_a_cursor() -> None:
    """What a request does before its first statement: request_started marks the health check due (Django's
    close_old_connections), and the first cursor runs it."""
    connection.close_if_unusable_or_obsolete()
    connection.cursor().close()


def _backend_pid() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        return int(cursor.fetchone()[0])


def test_a_quiet_connection_is_checked_without_a_statement() -> None:
    assert connection.settings_dict["CONN_HEALTH_CHECKS"]
    with connection.cursor() as cursor:
        cursor.execute("SELECT 'the last request'")
    pid = connection.connection.info.backend_pid
    _request_starts_and_opens_a_cursor()
    with _server() as server:
        (last,) = server.execute("SELECT query FROM pg_stat_activity WHERE pid = %s", [pid]).fetchone()
    assert last == "SELECT 'the last request'"  # no SELECT 1 since
    assert connection.connection.info.backend_pid == pid


def test_a_connection_the_server_ended_is_replaced_before_the_next_statement() -> None:
    ended = _backend_pid()
    with _server() as server:
        assert server.execute("SELECT pg_terminate_backend(%s)", [ended]).fetchone() == (True,)
        deadline = time.monotonic() + 10
        while server.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", [ended]).fetchone():
            assert time.monotonic() < deadline
            time.sleep(0.05)
    _request_starts_and_opens_a_cursor()
    assert _backend_pid() != ended  # reconnected, no error
