"""Who sees what a user made and shared: prompts, chains, agents.

One rule for every shareable kind of row (a model with ``owner``, ``visibility`` and a
``groups`` many-to-many): its owner sees it; others see it when it is shared with
everyone, or with a group they are in. Only staff share with everyone; others share
only with groups they belong to (staff: any group).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, TypeVar

from django.contrib.auth.models import Group
from django.db import models
from django.db.models import Q, QuerySet

M = TypeVar("M", bound=models.Model)


class Visibility(models.TextChoices):
    """Who besides the owner sees a shareable row."""

    PRIVATE = "private", "Private"
    GROUPS = "groups", "Shared with groups"
    EVERYONE = "everyone", "Everyone"


class SharingRefused(ValueError):
    """Sharing asked for that the user may not do; ``str(error)`` says why, for people."""


def visible_to(model: type[M], *, user: Any) -> QuerySet[M]:
    """The rows of ``model`` ``user`` may see: their own, those shared with everyone,
    and those shared with one of their groups (one query when evaluated; no
    duplicates). None for a signed-out visitor."""
    manager: Any = model._default_manager
    if user is None or not user.is_authenticated:
        return manager.none()
    through: Any = model.groups.through  # type: ignore[attr-defined]
    column = next(
        f.attname
        for f in through._meta.fields
        if f.is_relation and f.related_model is model  # the row's side of the link
    )
    shared = through.objects.filter(group__user=user).values(column)
    return manager.filter(
        Q(owner=user)
        | Q(visibility=Visibility.EVERYONE)
        | Q(visibility=Visibility.GROUPS, pk__in=shared)
    )


def groups_to_share_with(*, user: Any) -> QuerySet[Group]:
    """The groups ``user`` may share with: their own; staff, any. By name."""
    groups = Group.objects.all() if user.is_staff else Group.objects.filter(user=user)
    return groups.order_by("name")


def sharing_check(
    *, user: Any, visibility: str, group_ids: Iterable[int], what: str, admin: bool = False
) -> tuple[str, list[Group]]:
    """The visibility and groups asked for, if ``user`` may share that way.

    ``what``: the kind of row, for the messages ("prompt", "agent"). ``admin``: the
    change comes from Django admin (as staff). Returns ``(visibility, groups)``,
    groups empty unless shared with groups. Raises ``SharingRefused``: an unknown
    visibility, no group picked, everyone asked by a non-staff user, a group the user
    is not in.
    """
    if visibility not in Visibility.values:
        raise SharingRefused(f"Pick who can see the {what}: only you, groups, or everyone.")
    ids = sorted(set(group_ids))
    if visibility != Visibility.GROUPS:
        ids = []
    elif not ids:
        raise SharingRefused(f"Pick at least one group to share the {what} with.")
    privileged = admin or bool(getattr(user, "is_staff", False))
    if visibility == Visibility.EVERYONE and not privileged:
        raise SharingRefused(f"Only administrators can share this {what} with everyone.")
    groups = Group.objects.filter(pk__in=ids)
    if not privileged:
        groups = groups.filter(user=user)
    found = list(groups.order_by("name"))
    if len(found) != len(ids):
        raise SharingRefused(f"You can share this {what} only with groups you belong to.")
    return visibility, found
