"""EndpointPolicy.max_schedule_ahead: how far ahead an async job's run_at may be (issue 19)."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("accounts", "0006_policy_wait_and_streams")]

    operations = [
        migrations.AddField(
            model_name="endpointpolicy",
            name="max_schedule_ahead",
            field=models.PositiveIntegerField(
                default=604800,
                help_text="Seconds ahead an async job's run_at may be (default 7 days); 0: run_at only now or in the past.",
                verbose_name="max schedule ahead (s)",
            ),
        ),
    ]
