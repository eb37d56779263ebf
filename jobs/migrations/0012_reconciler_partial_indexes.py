"""Partial indexes for the reconcilers' scans of the few queued jobs and in-progress attempts among millions.

Built without blocking writes on PostgreSQL (see 0011): atomic = False.
"""

from django.db import migrations, models

from jobsite.db import AddIndexWithoutLock


class Migration(migrations.Migration):
    atomic = False

    dependencies = [("jobs", "0011_job_scale_indexes")]

    operations = [
        AddIndexWithoutLock(
            model_name="job",
            index=models.Index(
                condition=models.Q(status="queued"), fields=["created_at", "id"], name="job_queued_created"
            ),
        ),
        AddIndexWithoutLock(
            model_name="callbackattempt",
            index=models.Index(condition=models.Q(error="in progress"), fields=["at"], name="attempt_in_progress"),
        ),
    ]
