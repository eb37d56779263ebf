"""The admin ledger list's ordering index, built without blocking writes on PostgreSQL (see jobsite.db)."""

from django.db import migrations, models

from jobsite.db import AddIndexWithoutLock


class Migration(migrations.Migration):
    atomic = False

    dependencies = [("credits", "0001_ledger")]

    operations = [
        AddIndexWithoutLock(
            model_name="ledgerentry", index=models.Index(fields=["created_at", "id"], name="ledger_created_id")
        ),
    ]
