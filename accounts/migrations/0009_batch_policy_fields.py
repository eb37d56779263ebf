"""Batch policy fields (max jobs per batch, max upload size), and the `jobs.batch` policy row seeded as 0005
seeded `webhooks.test`."""

from django.db import migrations, models

DEFAULTS = {
    "scopes": "jobs:run",
    "rate_limit_algorithm": "token_bucket",
    "rate_limit_key": "user",
    "rate_limit": 600,
    "rate_window": 60,
    "refill_rate": 600,
}
"""Frozen copy of accounts.policies' default at this migration (a migration must not follow later code)."""


def seed(apps, schema_editor):
    EndpointPolicy = apps.get_model("accounts", "EndpointPolicy")
    EndpointPolicy.objects.get_or_create(name="jobs.batch", defaults=DEFAULTS)


class Migration(migrations.Migration):

    dependencies = [
        ('accounts', '0008_endpointpolicy_max_schedule_ahead'),
    ]

    operations = [
        migrations.AddField(
            model_name='endpointpolicy',
            name='batch_max_jobs',
            field=models.PositiveIntegerField(default=1000, help_text='Batches: job requests one batch may hold (inline or uploaded).', verbose_name='max jobs per batch'),
        ),
        migrations.AddField(
            model_name='endpointpolicy',
            name='upload_max_bytes',
            field=models.PositiveBigIntegerField(default=52428800, help_text='Batches: the largest JSONL file an upload may announce (Upload-Length); larger: 413.', verbose_name='max upload size (bytes)'),
        ),
        migrations.RunPython(seed, migrations.RunPython.noop),
    ]
