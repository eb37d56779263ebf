"""Ledger entries lose their lone account index: ledger_account_created (account, -created_at, -id) serves every lookup by
account, and each index is written on every posting. Only the index is dropped: AlterField alone would drop and re-add
the foreign key, which checks every row of the ledger again under a lock."""

import django.db.models.deletion
from django.db import migrations, models

LONE_INDEX = "credits_ledgerentry_account_id_6205bf0a"


class Migration(migrations.Migration):

    dependencies = [
        ("credits", "0002_ledger_created_index"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[
                migrations.RunSQL(
                    f'DROP INDEX IF EXISTS "{LONE_INDEX}"',
                    reverse_sql=f'CREATE INDEX "{LONE_INDEX}" ON "credits_ledgerentry" ("account_id")',
                )
            ],
            state_operations=[
                migrations.AlterField(
                    model_name="ledgerentry",
                    name="account",
                    field=models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="entries",
                        to="credits.creditaccount",
                    ),
                )
            ],
        )
    ]
