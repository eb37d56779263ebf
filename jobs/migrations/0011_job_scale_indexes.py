"""Indexes for ten million jobs (issue 17), built without blocking writes on PostgreSQL.

CREATE INDEX CONCURRENTLY cannot run inside a transaction, hence atomic = False. If a build fails half way,
PostgreSQL leaves an INVALID index behind: drop it (DROP INDEX CONCURRENTLY name) before migrating again.
"""

from django.db import migrations, models

from jobsite.db import AddIndexWithoutLock


class Migration(migrations.Migration):
    atomic = False

    dependencies = [("jobs", "0010_idempotency_job_and_attempt_tracking")]

    operations = [
        AddIndexWithoutLock(
            model_name="job", index=models.Index(fields=["created_at", "id"], name="job_created_id")
        ),
        AddIndexWithoutLock(
            model_name="job", index=models.Index(fields=["finished_at", "id"], name="job_finished_id")
        ),
        AddIndexWithoutLock(
            model_name="job",
            index=models.Index(
                condition=models.Q(status="running"), fields=["started_at", "id"], name="job_running_started"
            ),
        ),
        AddIndexWithoutLock(
            model_name="job",
            index=models.Index(
                condition=models.Q(callback_status="pending"), fields=["finished_at"], name="job_callback_pending"
            ),
        ),
    ]
