"""Seed a policy row per endpoint and a settings row per kind from the defaults in accounts.policies and jobs.kind_settings."""

from django.db import migrations


def seed(apps, schema_editor):
    from jobs.kinds import KINDS
    from accounts.policies import ENDPOINT_DEFAULTS
    from jobs.kind_settings import kind_defaults

    EndpointPolicy = apps.get_model("jobs", "EndpointPolicy")
    KindSettings = apps.get_model("jobs", "KindSettings")
    for name, defaults in ENDPOINT_DEFAULTS.items():
        EndpointPolicy.objects.get_or_create(name=name, defaults=defaults)
    for kind_name in KINDS:
        KindSettings.objects.get_or_create(kind=kind_name, defaults=kind_defaults(kind_name))


class Migration(migrations.Migration):
    dependencies = [("jobs", "0001_initial")]
    operations = [migrations.RunPython(seed, migrations.RunPython.noop)]
