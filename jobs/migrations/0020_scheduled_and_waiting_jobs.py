"""Held jobs (issues 19 and 20): `scheduled` (run_at) and `waiting` (depends_on), the dependency edges, and the
reconciler's partial indexes, built without blocking writes on PostgreSQL (see 0011): atomic = False."""

import django.db.models.deletion
from django.db import migrations, models

from jobsite.db import AddIndexWithoutLock


class Migration(migrations.Migration):
    atomic = False

    dependencies = [("jobs", "0019_job_cancel_while_running_and_retention")]

    operations = [
        migrations.AddField(
            model_name="job",
            name="run_at",
            field=models.DateTimeField(blank=True, help_text="Scheduled: not queued before this instant.", null=True),
        ),
        migrations.AddField(
            model_name="job",
            name="depends_on",
            field=models.JSONField(
                blank=True, default=list, help_text="Ids of the jobs it waits for (a copy of its JobDependency edges)."
            ),
        ),
        migrations.AddField(
            model_name="job",
            name="allow_dependency_failure",
            field=models.BooleanField(
                default=False, help_text="Runs once its dependencies are final, whatever their outcome."
            ),
        ),
        migrations.AddField(
            model_name="job",
            name="has_dependents",
            field=models.BooleanField(
                default=False,
                help_text="Some job depends on this one: its final state settles them (one flag, no query).",
            ),
        ),
        migrations.AlterField(
            model_name="job",
            name="status",
            field=models.CharField(
                choices=[
                    ("scheduled", "Scheduled"),
                    ("waiting", "Waiting"),
                    ("queued", "Queued"),
                    ("running", "Running"),
                    ("canceling", "Canceling"),
                    ("succeeded", "Succeeded"),
                    ("failed", "Failed"),
                    ("canceled", "Canceled"),
                ],
                default="queued",
                max_length=16,
            ),
        ),
        migrations.CreateModel(
            name="JobDependency",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                (
                    "job",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE, related_name="dependency_edges", to="jobs.job"
                    ),
                ),
                (
                    "depends_on",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE, related_name="dependent_edges", to="jobs.job"
                    ),
                ),
            ],
            options={
                "verbose_name_plural": "job dependencies",
                "constraints": [models.UniqueConstraint(fields=("job", "depends_on"), name="job_dependency_unique")],
            },
        ),
        AddIndexWithoutLock(
            model_name="job",
            index=models.Index(condition=models.Q(("status", "scheduled")), fields=["run_at"], name="job_scheduled_run_at"),
        ),
        AddIndexWithoutLock(
            model_name="job",
            index=models.Index(
                condition=models.Q(("status", "waiting")), fields=["created_at", "id"], name="job_waiting_created"
            ),
        ),
    ]
