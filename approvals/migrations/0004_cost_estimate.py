"""What approving a request may cost: its estimate and the estimate's known total.

Existing requests get an empty estimate (not estimated): their cards show no cost
line, and approving them holds nothing beyond what it held before.
"""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("approvals", "0003_four_eyes_and_votes"),
    ]

    operations = [
        migrations.AddField(
            model_name="approvalrequest",
            name="cost_estimate",
            field=models.JSONField(
                blank=True,
                default=dict,
                help_text="What approving may cost (approvals.costs.CostEstimate): the call's own cost and the run's next model step; empty: not estimated.",
            ),
        ),
        migrations.AddField(
            model_name="approvalrequest",
            name="estimated_cost_usd",
            field=models.DecimalField(
                blank=True,
                decimal_places=12,
                help_text="The parts of the cost estimate that have an amount; blank: none has.",
                max_digits=24,
                null=True,
                verbose_name="estimated cost (USD)",
            ),
        ),
    ]
