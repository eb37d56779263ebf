"""PostgreSQL: a global concurrency cap's count, read after its endpoint's lock, inside the statement that takes a slot.

A VOLATILE function's queries each take a fresh snapshot: its sum sees every admission committed before the lock was
granted, so one statement (one prepared statement: jobs.acceptance) can lock, count and take a slot exactly.
"""

from django.db import migrations

CREATE = """
CREATE OR REPLACE FUNCTION jobs_endpoint_in_use_locked(endpoint_name text, lock_key bigint) RETURNS bigint
LANGUAGE sql VOLATILE AS $$
    SELECT pg_advisory_xact_lock(lock_key);
    SELECT COALESCE(SUM(in_use), 0)::bigint FROM jobs_concurrencyslot WHERE endpoint = endpoint_name;
$$
"""
DROP = "DROP FUNCTION IF EXISTS jobs_endpoint_in_use_locked(text, bigint)"


def create(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(CREATE)


def drop(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP)


class Migration(migrations.Migration):

    dependencies = [
        ("jobs", "0023_job_holds_slot"),
    ]

    operations = [migrations.RunPython(create, drop)]
