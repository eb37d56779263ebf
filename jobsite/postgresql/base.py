"""Django's PostgreSQL backend, whose per-request connection health check looks at the socket first.

CONN_HEALTH_CHECKS makes Django run `SELECT 1` before the first statement of every request on a persistent
connection: one round trip more for every request. A server that ends a connection (a restart, a terminated
backend, a cut link) sends its error and EOF, so an idle connection with nothing to read has not been ended;
only one with something waiting gets the `SELECT 1`, which then fails and reconnects as before. Written by hand:
neither Django nor psycopg offers a check without a round trip (psycopg's pool runs a statement too).
"""

import select

from django.db.backends.postgresql import base
from psycopg.pq import TransactionStatus


class DatabaseWrapper(base.DatabaseWrapper):
    def is_usable(self) -> bool:
        """An idle connection the server has sent nothing on is usable; any other asks the server (`SELECT 1`)."""
        return self._idle_and_quiet() or super().is_usable()

    def _idle_and_quiet(self) -> bool:
        """Open, outside a transaction, and nothing sent by the server since the last reply."""
        connection = self.connection
        if connection is None or connection.closed or connection.info.transaction_status != TransactionStatus.IDLE:
            return False
        readable, _, _ = select.select([connection.fileno()], [], [], 0)
        return not readable
