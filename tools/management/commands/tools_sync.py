from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from tools.services import tools_sync


class Command(BaseCommand):
    help = "Create or update Tool rows from the tool registry (keeps admins' enabled/groups)."

    def handle(self, *args: Any, **options: Any) -> None:
        tools_sync()
        self.stdout.write(self.style.SUCCESS("Tool rows are in sync with the registry."))
