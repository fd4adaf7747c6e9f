"""The audit trail's models, in this app's state only: their tables already exist.

The tables were created by ``approvals`` (its 0001) and renamed to
``audit_auditevent`` and ``audit_auditchainhead`` by approvals' 0002, which
moved the models out of that app. So this migration depends on that one.
It is the only dependency of the audit app on an app above it, and it is
history only: no code of this app imports approvals, and nothing here
touches the database but the content types (below).

The content types of the two models pass from ``approvals`` to ``audit`` as
well, so the permissions granted on audit events (and admin log entries)
follow them instead of pointing at stale types. On a fresh database there
are none yet (``migrate`` creates them at its end) and nothing is updated.
"""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models

MODELS = ("auditevent", "auditchainhead")


def _move_content_types(apps, schema_editor, *, old, new):
    ContentType = apps.get_model("contenttypes", "ContentType")
    types = ContentType.objects.using(schema_editor.connection.alias)
    for model in MODELS:
        if not types.filter(app_label=new, model=model).exists():
            types.filter(app_label=old, model=model).update(app_label=new)


def content_types_to_audit(apps, schema_editor):
    _move_content_types(apps, schema_editor, old="approvals", new="audit")


def content_types_to_approvals(apps, schema_editor):
    _move_content_types(apps, schema_editor, old="audit", new="approvals")


class Migration(migrations.Migration):
    initial = True

    dependencies = [
        # Points up the layers on purpose: approvals' 0002 renames the tables
        # this state describes; see the module docstring.
        ("approvals", "0002_audit_trail_to_audit_app"),
        ("contenttypes", "0002_remove_content_type_name"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name="AuditChainHead",
                    fields=[
                        (
                            "id",
                            models.BigAutoField(
                                auto_created=True,
                                primary_key=True,
                                serialize=False,
                                verbose_name="ID",
                            ),
                        ),
                        ("last_sequence", models.PositiveBigIntegerField(default=0)),
                        ("last_hash", models.CharField(blank=True, max_length=64)),
                    ],
                ),
                migrations.CreateModel(
                    name="AuditEvent",
                    fields=[
                        (
                            "id",
                            models.BigAutoField(
                                auto_created=True,
                                primary_key=True,
                                serialize=False,
                                verbose_name="ID",
                            ),
                        ),
                        ("sequence", models.PositiveBigIntegerField(editable=False, unique=True)),
                        ("created_at", models.DateTimeField(db_index=True, editable=False)),
                        ("action", models.CharField(db_index=True, max_length=100)),
                        ("target_type", models.CharField(blank=True, max_length=100)),
                        ("target_id", models.CharField(blank=True, max_length=100)),
                        ("data", models.JSONField(blank=True, default=dict)),
                        ("ip", models.GenericIPAddressField(blank=True, null=True)),
                        ("prev_hash", models.CharField(max_length=64)),
                        ("hash", models.CharField(max_length=64, unique=True)),
                        (
                            "actor",
                            models.ForeignKey(
                                blank=True,
                                db_constraint=False,
                                null=True,
                                on_delete=django.db.models.deletion.DO_NOTHING,
                                related_name="+",
                                to=settings.AUTH_USER_MODEL,
                            ),
                        ),
                    ],
                    options={
                        "ordering": ("-sequence",),
                        "indexes": [
                            models.Index(
                                fields=["target_type", "target_id"],
                                name="audit_audit_target__59bbff_idx",
                            )
                        ],
                    },
                ),
            ],
            database_operations=[],
        ),
        migrations.RunPython(content_types_to_audit, content_types_to_approvals),
    ]
