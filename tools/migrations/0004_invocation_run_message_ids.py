"""``ToolInvocation.run`` and ``.message`` become plain id columns, rows and all.

They were foreign keys into ``conversations``, an app above ``tools``
(docs/architecture.md); a lower app may not point up. The columns
(``run_id``, ``message_id``), their indexes and the unique constraint on
``(run_id, tool_call_id)`` stay as they are:

1. ``AlterField`` to ``db_constraint=False`` drops the two foreign key
   constraints (on SQLite by rebuilding the table, rows copied); nothing else
   changes in the database.
2. ``SeparateDatabaseAndState`` swaps the foreign keys for ``BigIntegerField``
   columns of the same names in the migration state only: a ``db_index``
   field's index has the name the foreign key's had, and the unique constraint
   keeps its name and columns, so there is nothing to do in the database.

Backwards, the state gets its foreign keys back and step 1 adds the
constraints again (which fails if a row names a run or message that is gone).
This app's migrations still depend on ``conversations``' 0001 (through 0001
here): history only, as after this migration no state of this app refers to
that app.
"""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("tools", "0003_mcp_servers"),
    ]

    operations = [
        migrations.AlterField(
            model_name="toolinvocation",
            name="run",
            field=models.ForeignKey(
                db_constraint=False,
                on_delete=django.db.models.deletion.CASCADE,
                related_name="tool_invocations",
                to="conversations.run",
            ),
        ),
        migrations.AlterField(
            model_name="toolinvocation",
            name="message",
            field=models.ForeignKey(
                blank=True,
                db_constraint=False,
                help_text="The assistant message that made the call.",
                null=True,
                on_delete=django.db.models.deletion.CASCADE,
                related_name="tool_invocations",
                to="conversations.message",
            ),
        ),
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.RemoveConstraint(
                    model_name="toolinvocation",
                    name="tools_invocation_run_call_unique",
                ),
                migrations.RemoveField(model_name="toolinvocation", name="run"),
                migrations.RemoveField(model_name="toolinvocation", name="message"),
                migrations.AddField(
                    model_name="toolinvocation",
                    name="run_id",
                    field=models.BigIntegerField(
                        db_index=True, help_text="The run that made the call."
                    ),
                ),
                migrations.AddField(
                    model_name="toolinvocation",
                    name="message_id",
                    field=models.BigIntegerField(
                        blank=True,
                        db_index=True,
                        help_text="The assistant message that made the call.",
                        null=True,
                    ),
                ),
                migrations.AddConstraint(
                    model_name="toolinvocation",
                    constraint=models.UniqueConstraint(
                        fields=("run_id", "tool_call_id"),
                        name="tools_invocation_run_call_unique",
                    ),
                ),
                migrations.AlterModelOptions(
                    name="toolinvocation",
                    options={"ordering": ("run_id", "position", "id")},
                ),
            ],
            database_operations=[],
        ),
    ]
