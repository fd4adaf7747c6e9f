"""Reads of the prompt library. Who sees what is decided in one place,
:func:`prompts_visible`: a user's own prompts, those shared with one of their
groups, and those shared with everyone. A prompt the user may not see is
``PromptNotFound``, exactly as one that does not exist.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from django.db.models import Max, Prefetch, Q, QuerySet

from accounts.sharing import visible_to
from prompts.errors import PromptNotFound, PromptReadOnly, PromptUnavailable
from prompts.models import (
    DEFAULT_LABEL,
    LATEST,
    REFORMULATE_COMMAND,
    Chain,
    Prompt,
    PromptLabel,
    PromptPreference,
    PromptVersion,
)
from prompts.signals import model_names_query

#: The version of an exported prompt file (``prompt_export``, ``services.prompt_import``).
EXPORT_FORMAT = "tollgate.prompt/1"
#: Prompts the picker lists at most.
PICKER_SIZE = 8


def prompts_visible(*, user: Any) -> QuerySet[Prompt]:
    """The prompts ``user`` may see and use (``accounts.sharing.visible_to``)."""
    return visible_to(Prompt, user=user)


def prompt_list(*, user: Any, query: str = "", kind: str = "") -> list[Prompt]:
    """The user's visible prompts, own first, then by name; matching ``query`` (name,
    command or description, case-insensitive) and ``kind`` when given. Each carries
    ``latest_number``; two queries, whatever the count."""
    rows = (
        prompts_visible(user=user)
        .select_related("owner")
        .annotate(latest_number=Max("versions__number"))
    )
    query = query.replace("\x00", "").strip().lstrip("/")  # PostgreSQL text holds no NUL
    if query:
        rows = rows.filter(
            Q(name__icontains=query) | Q(command__icontains=query) | Q(description__icontains=query)
        )
    if kind:
        rows = rows.filter(kind=kind)
    items: list[Prompt] = list(rows.prefetch_related("labels__version").order_by("name", "id"))
    items.sort(key=lambda p: (p.owner_id != user.pk, p.name.lower(), p.pk))
    return items


def prompt_picker(*, user: Any, query: str, size: int = PICKER_SIZE) -> list[Prompt]:
    """Message templates for the composer's "/" picker: command starting with
    ``query`` first, then name or command containing it; own first. One query."""
    query = query.replace("\x00", "").strip().lstrip("/").lower()
    rows = prompts_visible(user=user).filter(kind=Prompt.Kind.TEMPLATE).select_related("owner")
    if query:
        rows = rows.filter(Q(command__icontains=query) | Q(name__icontains=query))
    found = list(rows.order_by("command", "id")[: size * 4])
    found.sort(
        key=lambda p: (
            not p.command.startswith(query),
            p.owner_id != user.pk,
            p.command,
            p.pk,
        )
    )
    return found[:size]


def prompt_get(*, user: Any, prompt_id: int) -> Prompt:
    """A prompt ``user`` may see, with its owner; ``PromptNotFound`` otherwise."""
    prompt = prompts_visible(user=user).select_related("owner").filter(pk=prompt_id).first()
    if prompt is None:
        raise PromptNotFound("Prompt not found.")
    return prompt


def may_edit(*, user: Any, prompt: Prompt) -> bool:
    """Whether ``user`` may change ``prompt`` on the prompts page: its owner only
    (the deployment's prompts and others' are changed in admin)."""
    return user is not None and user.is_authenticated and prompt.owner_id == user.pk


def prompt_get_own(*, user: Any, prompt_id: int, lock: bool = False) -> Prompt:
    """A prompt ``user`` may change (``may_edit``); locked (``SELECT … FOR UPDATE``)
    with ``lock`` (call inside ``transaction.atomic``). ``PromptNotFound`` for one
    they may not see, ``PromptReadOnly`` for one they may only see."""
    prompt = prompt_get(user=user, prompt_id=prompt_id)
    if not may_edit(user=user, prompt=prompt):
        raise PromptReadOnly("Only its owner can change this prompt.")
    if lock:
        prompt = (
            Prompt.objects.select_for_update(of=("self",)).select_related("owner").get(pk=prompt.pk)
        )
    return prompt


@dataclass
class PromptDetail:
    """A prompt as its page shows it: versions newest first, each with the names
    of the labels on it (``version.label_names``), and the labels by name."""

    prompt: Prompt
    versions: list[PromptVersion]
    labels: dict[str, PromptVersion] = field(default_factory=dict)

    @property
    def latest(self) -> PromptVersion:
        return self.versions[0]

    @property
    def current(self) -> PromptVersion:
        """The version shown first: the ``production`` label's, else the latest."""
        return self.labels.get(DEFAULT_LABEL, self.latest)


def prompt_detail(*, user: Any, prompt_id: int) -> PromptDetail:
    """A visible prompt with all its versions and labels; three queries."""
    prompt = prompt_get(user=user, prompt_id=prompt_id)
    versions = list(prompt.versions.select_related("author").order_by("-number"))
    by_id = {v.pk: v for v in versions}
    labels: dict[str, PromptVersion] = {}
    for version in versions:
        version.label_names = []  # type: ignore[attr-defined]
    for label in PromptLabel.objects.filter(prompt=prompt).order_by("name"):
        version = by_id[label.version_id]
        labels[label.name] = version
        version.label_names.append(label.name)  # type: ignore[attr-defined]
    return PromptDetail(prompt=prompt, versions=versions, labels=labels)


def prompt_version_get(*, prompt: Prompt, number: int) -> PromptVersion:
    version = PromptVersion.objects.filter(prompt=prompt, number=number).first()
    if version is None:
        raise PromptNotFound(f"{prompt.name} has no version {number}.")
    return version


def prompt_version_resolve(*, prompt: Prompt, ref: str = "") -> PromptVersion:
    """The version ``ref`` names: a label, ``latest``, or (empty) the ``production``
    label's version, else the latest. ``PromptUnavailable`` for a label the prompt
    does not have."""
    versions = PromptVersion.objects.filter(prompt=prompt)
    if ref and ref != LATEST:
        version = versions.filter(labels__name=ref).first()
        if version is None:
            raise PromptUnavailable(f"The prompt {prompt.name} has no label {ref!r}.")
        return version
    if not ref:
        version = versions.filter(labels__name=DEFAULT_LABEL).first()
        if version is not None:
            return version
    version = versions.order_by("-number").first()
    if version is None:  # a prompt is made with its first version; never without one
        raise PromptUnavailable(f"The prompt {prompt.name} has no version.")
    return version


def prompt_version_for_use(
    *, user: Any, prompt_id: int, ref: str = "", version_id: int | None = None
) -> PromptVersion:
    """The version of a prompt ``user`` may use: pinned (``version_id``) or at
    ``ref`` (``prompt_version_resolve``). The version comes with its prompt.

    Raises ``PromptUnavailable`` when the prompt is gone or no longer visible to
    the user, or the label or version is gone.
    """
    try:
        prompt = prompt_get(user=user, prompt_id=prompt_id)
    except PromptNotFound:
        raise PromptUnavailable(
            "The prompt chosen for this conversation is no longer available to you."
        ) from None
    if version_id is not None:
        version = PromptVersion.objects.filter(prompt=prompt, pk=version_id).first()
        if version is None:
            raise PromptUnavailable(f"The pinned version of {prompt.name} is gone.")
    else:
        version = prompt_version_resolve(prompt=prompt, ref=ref)
    version.prompt = prompt
    return version


def system_prompts_for(*, user: Any) -> list[Prompt]:
    """Visible system prompts, own first, for a conversation's settings; each with
    its labels and versions prefetched (``prompt.labels.all()``, newest version
    first). Three queries."""
    rows = (
        prompts_visible(user=user)
        .filter(kind=Prompt.Kind.SYSTEM)
        .exclude(owner__isnull=True, command=REFORMULATE_COMMAND)
        .select_related("owner")
        .prefetch_related(
            Prefetch("labels", queryset=PromptLabel.objects.order_by("name")),
            Prefetch("versions", queryset=PromptVersion.objects.order_by("-number")),
        )
    )
    items = list(rows)
    items.sort(key=lambda p: (p.owner_id != user.pk, p.name.lower(), p.pk))
    return items


def reformulation_prompt(*, user: Any) -> Prompt | None:
    """The instruction ``user``'s drafts are reformulated with: their choice when it
    is still visible to them, else the deployment's ``/reformulate`` (``None``
    when an administrator deleted it)."""
    chosen = (
        PromptPreference.objects.filter(user=user)
        .values_list("reformulation_prompt_id", flat=True)
        .first()
    )
    if chosen is not None:
        prompt = prompts_visible(user=user).filter(pk=chosen).first()
        if prompt is not None:
            return prompt
    return Prompt.objects.filter(owner__isnull=True, command=REFORMULATE_COMMAND).first()


def prompt_export(*, user: Any, prompt_id: int) -> dict[str, Any]:
    """One visible prompt with all its versions and labels, as JSON-able data
    (``EXPORT_FORMAT``; read back by ``services.prompt_import``). Who may see it
    and which groups it is shared with stay out: they belong to this deployment."""
    detail = prompt_detail(user=user, prompt_id=prompt_id)
    prompt = detail.prompt
    return {
        "format": EXPORT_FORMAT,
        "name": prompt.name,
        "command": prompt.command,
        "description": prompt.description,
        "kind": prompt.kind,
        "versions": [
            {
                "number": v.number,
                "template": v.template,
                "model": v.model_name,
                "temperature": None if v.temperature is None else str(v.temperature),
                "max_output_tokens": v.max_output_tokens,
                "change_note": v.change_note,
                "author": v.author.email if v.author else None,
                "created_at": v.created_at.isoformat(),
            }
            for v in reversed(detail.versions)
        ],
        "labels": {name: version.number for name, version in sorted(detail.labels.items())},
    }


def model_names_available() -> list[str] | None:
    """The names of the models a prompt version may name (``signals.model_names_query``,
    answered by ``conversations``), sorted; ``None`` when no app answers."""
    replies = model_names_query.send(sender=PromptVersion)
    if not replies:
        return None
    return sorted({name for _receiver, names in replies for name in names or ()})


# -- chains -------------------------------------------------------------------------------


def chains_visible(*, user: Any) -> QuerySet[Chain]:
    """The chains ``user`` may see and run: their own, those shared with one of their
    groups, and those shared with everyone, as the deployment's built-ins are
    (``accounts.sharing.visible_to``)."""
    return visible_to(Chain, user=user)


def chain_list(*, user: Any, query: str = "") -> list[Chain]:
    """The user's visible chains with their steps, own first, then by name; matching
    ``query`` (name or description) when given. Two queries, whatever the count."""
    rows = chains_visible(user=user).select_related("owner")
    query = query.replace("\x00", "").strip()
    if query:
        rows = rows.filter(Q(name__icontains=query) | Q(description__icontains=query))
    items = list(rows.prefetch_related("steps").order_by("name", "id"))
    items.sort(key=lambda c: (c.owner_id != user.pk, c.name.lower(), c.pk))
    return items


def chain_choices(*, user: Any) -> list[Chain]:
    """The chains the composer offers ``user`` (name and owner only), by name. One query."""
    return list(chains_visible(user=user).only("pk", "name", "owner_id").order_by("name", "id"))


def chain_get(*, user: Any, chain_id: int) -> Chain:
    """A chain ``user`` may see (its steps prefetched); ``PromptNotFound`` otherwise
    (also for another user's private chain: nothing is revealed)."""
    chain = (
        chains_visible(user=user)
        .select_related("owner")
        .prefetch_related("steps")
        .filter(pk=chain_id)
        .first()
    )
    if chain is None:
        raise PromptNotFound("Chain not found.")
    return chain


def chain_get_own(*, user: Any, chain_id: int) -> Chain:
    """A chain ``user`` may change (its owner); ``PromptNotFound`` for one they may not
    see, ``PromptReadOnly`` for one they may only see (the deployment's, shared ones)."""
    chain = chain_get(user=user, chain_id=chain_id)
    if chain.owner_id != user.pk:
        raise PromptReadOnly("Only its owner can change this chain.")
    return chain
