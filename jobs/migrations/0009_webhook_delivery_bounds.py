from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("jobs", "0008_jobs_sync_per_user_cap")]

    operations = [
        migrations.AlterField(
            model_name="kindsettings",
            name="callback_backoff",
            field=models.FloatField(
                default=1.0, help_text="Scale of the webhook retry schedule (1.0: 5 s, 5 min, 30 min, 2 h, 5 h, 10 h)."
            ),
        ),
        migrations.AddField(
            model_name="callbackattempt",
            name="retries_left",
            field=models.PositiveSmallIntegerField(default=0, help_text="Retries still allowed after this one."),
        ),
        migrations.AddField(
            model_name="callbackattempt",
            name="give_up_at",
            field=models.DateTimeField(blank=True, help_text="No retry of this delivery starts later.", null=True),
        ),
    ]
