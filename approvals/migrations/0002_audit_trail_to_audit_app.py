"""The audit trail's two tables pass to the new ``audit`` app, rows and all.

Only renames reach the database: the tables take the names the ``audit`` app
gives them (``AlterModelTable``, which every backend supports) and the one
named index takes the name Django derives for it there (``RenameIndex``).
Then the models leave this app's migration state without a ``DROP TABLE``;
``audit/migrations/0001_initial.py`` adds them to the audit app's state, also
without touching the database. A fresh database goes the same way (created
here by 0001, renamed here), so old and new databases end up alike.

Backwards, the same renames in reverse give the tables back to approvals.
"""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("approvals", "0001_initial"),
    ]

    operations = [
        migrations.AlterModelTable(name="auditevent", table="audit_auditevent"),
        migrations.AlterModelTable(name="auditchainhead", table="audit_auditchainhead"),
        migrations.RenameIndex(
            model_name="auditevent",
            new_name="audit_audit_target__59bbff_idx",
            old_name="approvals_a_target__0429b0_idx",
        ),
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.DeleteModel(name="AuditEvent"),
                migrations.DeleteModel(name="AuditChainHead"),
            ],
            database_operations=[],
        ),
    ]
