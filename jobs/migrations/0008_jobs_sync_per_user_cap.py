"""Cap each user's concurrent sync jobs on an existing `jobs.sync` policy row that has no cap yet.

New installations get the cap from jobs.policies.ENDPOINT_DEFAULTS through the seed migration; a row
that staff already capped keeps its value. A row left at 0 (no cap) is taken as the old default.
"""

from django.db import migrations

CAP = 4  # jobs.policies.SYNC_MAX_CONCURRENT_PER_USER at the time of writing (migrations do not follow code)


def cap_sync_jobs(apps, schema_editor):
    EndpointPolicy = apps.get_model("jobs", "EndpointPolicy")
    EndpointPolicy.objects.filter(name="jobs.sync", max_concurrent_per_user=0).update(max_concurrent_per_user=CAP)


class Migration(migrations.Migration):
    dependencies = [("jobs", "0007_job_client_ip_account_policies")]
    operations = [migrations.RunPython(cap_sync_jobs, migrations.RunPython.noop)]
