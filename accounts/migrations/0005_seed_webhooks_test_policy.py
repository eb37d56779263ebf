"""Seed the `webhooks.test` policy row (the test-event endpoint), as 0002 and 0007 of jobs seeded theirs."""

from django.db import migrations

DEFAULTS = {
    "scopes": "account:write",
    "rate_limit_algorithm": "token_bucket",
    "rate_limit_key": "user",
    "rate_limit": 10,
    "rate_window": 60,
    "refill_rate": 10,
}
"""Frozen copy of accounts.policies' default at this migration (a migration must not follow later code)."""


def seed(apps, schema_editor):
    EndpointPolicy = apps.get_model("accounts", "EndpointPolicy")
    EndpointPolicy.objects.get_or_create(name="webhooks.test", defaults=DEFAULTS)


class Migration(migrations.Migration):
    dependencies = [("accounts", "0004_endpointpolicy")]
    operations = [migrations.RunPython(seed, migrations.RunPython.noop)]
