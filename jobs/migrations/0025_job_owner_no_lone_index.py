"""Jobs and Idempotency-Key records lose their lone owner index: a composite index that starts with the owner serves every
lookup by owner (job_owner_created; the (owner, key) unique constraint), and each index is written on every INSERT and
on every UPDATE that changes an indexed column (a job's claim and outcome). Only the index is dropped: AlterField
alone would drop and re-add the foreign key, which checks every row of the table again under a lock."""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models

LONE_INDEXES = {
    "jobs_job_owner_id_4c884775": "jobs_job",
    "jobs_idempotencyrecord_owner_id_45de27df": "jobs_idempotencyrecord",
}


class Migration(migrations.Migration):

    dependencies = [
        ("jobs", "0024_endpoint_in_use_locked"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[
                migrations.RunSQL(
                    f'DROP INDEX IF EXISTS "{index}"', reverse_sql=f'CREATE INDEX "{index}" ON "{table}" ("owner_id")'
                )
                for index, table in LONE_INDEXES.items()
            ],
            state_operations=[
                migrations.AlterField(
                    model_name="idempotencyrecord",
                    name="owner",
                    field=models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="+",
                        to=settings.AUTH_USER_MODEL,
                    ),
                ),
                migrations.AlterField(
                    model_name="job",
                    name="owner",
                    field=models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="jobs",
                        to=settings.AUTH_USER_MODEL,
                    ),
                ),
            ],
        )
    ]
