"""``AuditEvent.actor`` becomes the plain ``actor_id`` column it already was.

The actor was a foreign key to ``settings.AUTH_USER_MODEL`` (``accounts.User``)
without a database constraint; ``audit`` sits below ``accounts``
(docs/architecture.md) and may not point at it. The column, its index and
every row stay as they are: only the migration state changes, so there is
nothing to do in the database, forwards or backwards. The hash chain reads
``actor_id`` either way.
"""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("audit", "0001_initial"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.RemoveField(model_name="auditevent", name="actor"),
                migrations.AddField(
                    model_name="auditevent",
                    name="actor_id",
                    field=models.BigIntegerField(
                        blank=True,
                        db_index=True,
                        help_text="The user who acted; none for the system.",
                        null=True,
                    ),
                ),
            ],
            database_operations=[],
        ),
    ]
