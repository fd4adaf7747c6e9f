"""``manage.py audit_verify``: check the audit trail's hash chain end to end."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from audit.selectors import audit_verify


class Command(BaseCommand):
    help = "Verify the audit trail's hash chain; exit 1 naming the first broken event."

    def handle(self, *args: Any, **options: Any) -> None:
        result = audit_verify()
        if result.ok:
            self.stdout.write(
                self.style.SUCCESS(f"Audit trail OK: {result.checked} events checked.")
            )
            return
        where = (
            f"event id {result.first_broken_id}"
            if result.first_broken_id is not None
            else "the end of the chain"
        )
        raise CommandError(
            f"Audit trail BROKEN at {where}: {result.reason}. "
            f"{result.checked} events verified before it.",
            returncode=1,
        )
