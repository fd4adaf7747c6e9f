"""Admin helpers every app's ``admin.py`` shares."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest


class ReadOnlyAdminMixin:
    """For a ``ModelAdmin`` or an inline of rows only the product writes (services,
    the audit trail, the ledger): admins look, never add or change; they delete
    only where ``deletable`` is set (then as the admin's own permissions allow)."""

    deletable = False

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return self.deletable and super().has_delete_permission(request, obj)  # type: ignore[misc]
