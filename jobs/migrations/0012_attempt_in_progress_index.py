"""A partial index for the webhook reconciler's scan of the few in-progress attempts among millions.

Built without blocking writes on PostgreSQL (see 0011): atomic = False.
"""

from django.db import migrations, models

from jobsite.db import AddIndexWithoutLock


class Migration(migrations.Migration):
    atomic = False

    dependencies = [("jobs", "0011_job_scale_indexes")]

    operations = [
        AddIndexWithoutLock(
            model_name="callbackattempt",
            index=models.Index(condition=models.Q(error="in progress"), fields=["at"], name="attempt_in_progress"),
        ),
    ]
