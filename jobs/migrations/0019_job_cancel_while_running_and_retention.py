"""Cancel while running (status canceling) and retention (expires_at, kind retention, tombstones).

The purge's index is built without blocking writes on PostgreSQL (CREATE INDEX CONCURRENTLY, hence
atomic = False; a failed build leaves an INVALID index: DROP INDEX CONCURRENTLY it, then migrate again).
The backfill gives jobs that were final before retention existed their expiry.
"""

from datetime import timedelta

import django.db.models.deletion
import django.utils.timezone
from django.conf import settings
from django.db import migrations, models
from django.db.models import Case, F, Value, When

from jobsite.db import AddIndexWithoutLock

DEFAULT_RETENTION_DAYS = 7
FINAL = ["succeeded", "failed", "canceled"]
BACKFILL_BATCH = 10_000


def backfill_expiry(apps, schema_editor):
    """Jobs final before retention existed expire like new ones: finished_at plus their kind's retention.

    In primary-key batches, each its own transaction (the migration is not atomic): at millions of jobs one
    UPDATE would lock every final job for minutes."""
    Job = apps.get_model("jobs", "Job")
    KindSettings = apps.get_model("jobs", "KindSettings")
    retention = dict(KindSettings.objects.values_list("kind", "retention"))
    days = Case(
        *(When(kind=kind, then=Value(timedelta(days=n))) for kind, n in retention.items()),
        default=Value(timedelta(days=DEFAULT_RETENTION_DAYS)),
    )
    pending = Job.objects.filter(status__in=FINAL, expires_at=None, finished_at__isnull=False).order_by("pk")
    last = None
    while ids := list((pending.filter(pk__gt=last) if last else pending).values_list("pk", flat=True)[:BACKFILL_BATCH]):
        Job.objects.filter(pk__in=ids).update(expires_at=F("finished_at") + days)
        last = ids[-1]


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("jobs", "0018_job_progress_and_webhook_events"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.CreateModel(
            name="JobTombstone",
            fields=[
                ("id", models.UUIDField(help_text="The purged job's id.", primary_key=True, serialize=False)),
                ("expired_at", models.DateTimeField(help_text="The job's expires_at.")),
                (
                    "purged_at",
                    models.DateTimeField(
                        default=django.utils.timezone.now, help_text="Deleted itself TOMBSTONE_RETENTION_DAYS later."
                    ),
                ),
            ],
        ),
        migrations.AddField(
            model_name="job",
            name="expires_at",
            field=models.DateTimeField(
                blank=True,
                help_text="Set when final (its kind's retention): the purge deletes it after this.",
                null=True,
            ),
        ),
        migrations.AddField(
            model_name="kindsettings",
            name="retention",
            field=models.PositiveIntegerField(
                default=7,
                help_text="Days a final job (input, result, webhook attempts) is kept before the purge deletes it.",
                verbose_name="retention (days)",
            ),
        ),
        migrations.AlterField(
            model_name="job",
            name="status",
            field=models.CharField(
                choices=[
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
        migrations.RunPython(backfill_expiry, migrations.RunPython.noop),
        AddIndexWithoutLock(
            model_name="job",
            index=models.Index(
                condition=models.Q(("expires_at__isnull", False)), fields=["expires_at", "id"], name="job_expires_id"
            ),
        ),
        migrations.AddField(
            model_name="jobtombstone",
            name="owner",
            field=models.ForeignKey(
                on_delete=django.db.models.deletion.CASCADE, related_name="+", to=settings.AUTH_USER_MODEL
            ),
        ),
        migrations.AddIndex(
            model_name="jobtombstone",
            index=models.Index(fields=["purged_at", "id"], name="tombstone_purged_id"),
        ),
    ]
