"""``manage.py createadmin``: create the first administrator.

Reads ``TOLLGATE_ADMIN_EMAIL`` and ``TOLLGATE_ADMIN_PASSWORD`` from the
environment; asks for whichever is missing when a terminal is attached, and
fails with a clear message under ``--noinput``. No password is ever built in.
"""

from __future__ import annotations

import getpass
import os
import sys
from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from accounts.services import admin_create_or_promote


class Command(BaseCommand):
    help = "Create (or promote) a superuser from TOLLGATE_ADMIN_EMAIL/PASSWORD or interactively."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--email", help="Admin email (default: $TOLLGATE_ADMIN_EMAIL).")
        parser.add_argument(
            "--noinput",
            "--no-input",
            action="store_false",
            dest="interactive",
            help="Never prompt; fail if the email or password is missing from the environment.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        interactive = options["interactive"] and sys.stdin.isatty()
        email = options.get("email") or os.environ.get("TOLLGATE_ADMIN_EMAIL", "")
        password = os.environ.get("TOLLGATE_ADMIN_PASSWORD", "")
        if not email:
            if not interactive:
                raise CommandError("Set TOLLGATE_ADMIN_EMAIL (or pass --email).")
            email = input("Admin email: ").strip()
        if not password:
            if not interactive:
                raise CommandError("Set TOLLGATE_ADMIN_PASSWORD.")
            password = getpass.getpass("Password: ")
            if password != getpass.getpass("Password (again): "):
                raise CommandError("The two passwords differ.")
        try:
            user, created = admin_create_or_promote(email=email, password=password)
        except ValidationError as exc:
            raise CommandError("; ".join(exc.messages)) from exc
        verb = "Created" if created else "Promoted existing user"
        self.stdout.write(self.style.SUCCESS(f"{verb} {user.email} as administrator."))
