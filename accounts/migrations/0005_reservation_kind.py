"""What a reservation is for: a model call (every existing row) or an approved tool call.

The partial index serves the lookup in front of every model call of a run that
had approvals (``budget_release_approved``).
"""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0004_budget_counters_from_reservations"),
    ]

    operations = [
        migrations.AddField(
            model_name="budgetreservation",
            name="kind",
            field=models.CharField(
                choices=[("call", "model call"), ("approval", "approved tool call")],
                default="call",
                max_length=16,
            ),
        ),
        migrations.AddIndex(
            model_name="budgetreservation",
            index=models.Index(
                condition=models.Q(("kind", "approval"), ("status", "held")),
                fields=["run_id"],
                name="accounts_resv_approval_idx",
            ),
        ),
    ]
