"""Four eyes and N-of-M: the options on rules and requests, and one vote per person.

Existing rules and requests get ``four_eyes=False`` and ``approvals_required=1``:
they decide as before. Existing decided requests get no votes (they were
decided before votes were recorded; the audit trail has their decisions).
"""

import django.core.validators
import django.db.models.deletion
import django.utils.timezone
from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("approvals", "0002_audit_trail_to_audit_app"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.AddField(
            model_name="approvalpolicy",
            name="four_eyes",
            field=models.BooleanField(
                default=False,
                help_text="The requester may never decide their own request: not as a member of the approvers group, not as staff or superuser. Needs an approvers group.",
                verbose_name="four eyes",
            ),
        ),
        migrations.AddField(
            model_name="approvalpolicy",
            name="approvals_required",
            field=models.PositiveSmallIntegerField(
                default=1,
                help_text="How many different people must approve (1 to 10); one denial denies at once. More than 1 needs an approvers group.",
                validators=[
                    django.core.validators.MinValueValidator(1),
                    django.core.validators.MaxValueValidator(10),
                ],
            ),
        ),
        migrations.AddConstraint(
            model_name="approvalpolicy",
            constraint=models.CheckConstraint(
                condition=models.Q(("approvals_required__gte", 1), ("approvals_required__lte", 10)),
                name="approvals_policy_approvals_required_range",
            ),
        ),
        migrations.AddConstraint(
            model_name="approvalpolicy",
            constraint=models.CheckConstraint(
                condition=models.Q(
                    models.Q(("approvals_required", 1), ("four_eyes", False)),
                    ("approvers_group__isnull", False),
                    _connector="OR",
                ),
                name="approvals_policy_quorum_needs_approvers",
            ),
        ),
        migrations.AddField(
            model_name="approvalrequest",
            name="four_eyes",
            field=models.BooleanField(
                default=False, help_text="The requester may never decide this request."
            ),
        ),
        migrations.AddField(
            model_name="approvalrequest",
            name="approvals_required",
            field=models.PositiveSmallIntegerField(
                default=1, help_text="Approvals from different people that approve it."
            ),
        ),
        migrations.AddConstraint(
            model_name="approvalrequest",
            constraint=models.CheckConstraint(
                condition=models.Q(("approvals_required__gte", 1)),
                name="approvals_request_approvals_required_positive",
            ),
        ),
        migrations.AddConstraint(
            model_name="approvalrequest",
            constraint=models.CheckConstraint(
                condition=models.Q(
                    models.Q(("approvals_required", 1), ("four_eyes", False)),
                    ("approver_group__isnull", False),
                    _connector="OR",
                ),
                name="approvals_request_quorum_needs_approvers",
            ),
        ),
        migrations.CreateModel(
            name="ApprovalVote",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                (
                    "decision",
                    models.CharField(
                        choices=[("approve", "Approve"), ("deny", "Deny")], max_length=8
                    ),
                ),
                ("reason", models.TextField(blank=True)),
                ("arguments_hash", models.CharField(max_length=64)),
                ("edited", models.BooleanField(default=False)),
                ("created_at", models.DateTimeField(default=django.utils.timezone.now)),
                (
                    "approval",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="votes",
                        to="approvals.approvalrequest",
                    ),
                ),
                (
                    "voter",
                    models.ForeignKey(
                        blank=True,
                        null=True,
                        on_delete=django.db.models.deletion.SET_NULL,
                        related_name="approval_votes",
                        to=settings.AUTH_USER_MODEL,
                    ),
                ),
            ],
            options={
                "ordering": ("created_at", "id"),
                "constraints": [
                    models.UniqueConstraint(
                        fields=("approval", "voter"), name="approvals_vote_once_per_voter"
                    )
                ],
            },
        ),
    ]
