"""Audit every admin change to a model: the ``AuditedAdmin`` mixin and, for inline
rows saved with their parent, ``audited_formset_save``.

Each change is one ``<name>.changed`` event (``budget.changed``,
``model_config.changed``) whose data says the ``operation`` (created, updated or
deleted), the row ``before`` and ``after`` (its concrete fields; a foreign key
as its id) and the ``diff`` (field → ``[before, after]``), written in the
admin's own transaction, so a change that rolls back leaves no event.
"""

from __future__ import annotations

from typing import Any

from django.db import models
from django.db.models import QuerySet
from django.http import HttpRequest

from audit.services import audit_record

#: Fields left out of snapshots: they change on every save and say nothing.
_NOISE = frozenset({"created_at", "updated_at"})


def admin_snapshot(obj: models.Model) -> dict[str, Any]:
    """The concrete fields of ``obj`` (a foreign key as its id), for an audit event."""
    return {
        field.attname: field.value_from_object(obj)
        for field in obj._meta.concrete_fields
        if field.attname not in _NOISE
    }


def _stored(obj: models.Model) -> dict[str, Any] | None:
    if obj.pk is None:
        return None
    row = type(obj)._default_manager.filter(pk=obj.pk).first()
    return admin_snapshot(row) if row is not None else None


def admin_change_record(
    *,
    name: str,
    obj: models.Model,
    operation: str,
    request: HttpRequest,
    before: dict[str, Any] | None = None,
    pk: Any = None,
) -> None:
    """Audit ``<name>.changed`` for ``obj`` (``operation``: created, updated, deleted)
    by the admin user of ``request``; ``before``: the row before the change."""
    # As stored (a decimal with its column's places), like ``before``.
    after = (_stored(obj) or admin_snapshot(obj)) if operation != "deleted" else None
    keys = set(before or {}) | set(after or {})
    diff = {
        key: [(before or {}).get(key), (after or {}).get(key)]
        for key in sorted(keys)
        if (before or {}).get(key) != (after or {}).get(key)
    }
    audit_record(
        action=f"{name}.changed",
        actor=request.user,
        target_type=name,
        target_id=pk if pk is not None else (obj.pk or ""),
        data={"operation": operation, "before": before, "after": after, "diff": diff},
        ip=request.META.get("REMOTE_ADDR") or None,
    )


class AuditedAdmin:
    """A ``ModelAdmin`` mixin: saving and deleting rows (one, or a selection) is
    audited as ``<audit_name>.changed``."""

    audit_name: str = ""

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        before = _stored(obj) if change else None
        super().save_model(request, obj, form, change)  # type: ignore[misc]
        admin_change_record(
            name=self.audit_name,
            obj=obj,
            operation="updated" if change else "created",
            request=request,
            before=before,
        )

    def delete_model(self, request: HttpRequest, obj: Any) -> None:
        before, pk = admin_snapshot(obj), obj.pk
        super().delete_model(request, obj)  # type: ignore[misc]
        admin_change_record(
            name=self.audit_name,
            obj=obj,
            operation="deleted",
            request=request,
            before=before,
            pk=pk,
        )

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        for obj in list(queryset):
            self.delete_model(request, obj)


def audited_formset_save(
    request: HttpRequest, formset: Any, save: Any, *, names: dict[type[models.Model], str]
) -> None:
    """Save an inline ``formset`` with ``save(formset)`` (the admin's ``save_formset``)
    and audit each row it created, changed or deleted whose model is in ``names``
    (model → audit name)."""
    name = names.get(formset.model)
    if name is None:
        save(formset)
        return
    before = {
        form.instance.pk: admin_snapshot(
            form.instance.__class__._default_manager.get(pk=form.instance.pk)
        )
        for form in formset.forms
        if form.instance.pk is not None and (form.has_changed() or form in formset.deleted_forms)
    }
    deleted_pks = {id(form.instance): form.instance.pk for form in formset.deleted_forms}
    save(formset)
    for obj in formset.new_objects:
        admin_change_record(name=name, obj=obj, operation="created", request=request)
    for obj, _fields in formset.changed_objects:
        admin_change_record(
            name=name, obj=obj, operation="updated", request=request, before=before.get(obj.pk)
        )
    for obj in formset.deleted_objects:
        pk = deleted_pks.get(id(obj))
        admin_change_record(
            name=name, obj=obj, operation="deleted", request=request, before=before.get(pk), pk=pk
        )


class AuditedInlines:
    """A ``ModelAdmin`` mixin: inline rows of the models in ``inline_audit_names``
    (model → audit name), saved with their parent, are audited as
    ``audited_formset_save`` does."""

    inline_audit_names: dict[type[models.Model], str] = {}

    def save_formset(self, request: HttpRequest, form: Any, formset: Any, change: bool) -> None:
        parent = super()

        def save(rows: Any) -> None:
            parent.save_formset(request, form, rows, change)  # type: ignore[attr-defined]

        audited_formset_save(request, formset, save, names=self.inline_audit_names)
