# A merge of the four 0007 leaves integ holds (the lead renumbers them into a chain at merge; drop this then).
from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("jobs", "0007_idempotency_job_and_attempt_tracking"),
        ("jobs", "0007_job_client_ip_account_policies"),
        ("jobs", "0007_jobs_sync_per_user_cap"),
        ("jobs", "0007_webhook_delivery_bounds"),
    ]

    operations = []
