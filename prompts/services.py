"""Writes of the prompt library, each audited.

Every service validates first (``PromptError`` with a message for people;
nothing written), then writes in one short transaction with the prompt's row
locked (version numbers and label moves are serialised per prompt), and audits
as the transaction's last write (``audit_deferred``). Versions are only ever
added: an edit is ``prompt_version_create``, a restore copies an old version
into a new one.

Who may write: a prompt's owner on the prompts page; an administrator in Django
admin (``admin=True``: admin's own permissions were checked) for any prompt,
the deployment's own included.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, Literal

from django.conf import settings
from django.contrib.auth.models import Group
from django.db import transaction
from django.db.models import Max
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from accounts.sharing import SharingRefused, sharing_check
from audit.services import audit_deferred, audit_record
from prompts.errors import PromptError, PromptNotFound
from prompts.models import (
    CHAIN_VARIABLES,
    COMMAND_RE,
    DEFAULT_LABEL,
    JUDGE_VARIABLES,
    LABEL_RE,
    LATEST,
    MAX_CHAIN_STEPS,
    MAX_ROUNDS,
    Chain,
    ChainStep,
    Prompt,
    PromptLabel,
    PromptPreference,
    PromptVersion,
)
from prompts.selectors import (
    chain_get_own,
    model_names_available,
    prompt_get,
    prompt_get_own,
)
from prompts.templating import PromptTemplateError, template_check

NAME_CHARS = 120
DESCRIPTION_CHARS = 300
NOTE_CHARS = 300
MAX_OUTPUT_TOKENS = 1_000_000


# -- checks -----------------------------------------------------------------------------


def _name(name: str) -> str:
    name = " ".join((name or "").split())
    if not name:
        raise PromptError("Give the prompt a name.")
    if len(name) > NAME_CHARS:
        raise PromptError(f"The name is too long ({NAME_CHARS} characters at most).")
    return name


def _command(command: str, *, owner_id: int | None, prompt_id: int | None = None) -> str:
    """A valid command, free for ``owner_id`` and not one the deployment reserves."""
    command = (command or "").strip().lstrip("/").lower()
    if not COMMAND_RE.fullmatch(command):
        raise PromptError(
            "The command must be 1 to 40 lowercase letters, digits, - or _, "
            "starting with a letter or digit."
        )
    others = Prompt.objects.exclude(pk=prompt_id) if prompt_id else Prompt.objects.all()
    if owner_id is not None and others.filter(owner__isnull=True, command=command).exists():
        raise PromptError(f"/{command} is reserved by this deployment; pick another command.")
    if others.filter(owner_id=owner_id, command=command).exists():
        whose = "You already have" if owner_id is not None else "The deployment already has"
        raise PromptError(f"{whose} a prompt with the command /{command}.")
    return command


def _kind(kind: str) -> str:
    if kind not in Prompt.Kind.values:
        raise PromptError("The kind must be a system prompt or a message template.")
    return kind


def _temperature(value: Decimal | float | str | None) -> Decimal | None:
    if value is None or value == "":
        return None
    try:
        number = Decimal(str(value))
    except InvalidOperation:
        raise PromptError("The temperature must be a number from 0 to 2.") from None
    if not number.is_finite() or not Decimal(0) <= number <= Decimal(2):
        raise PromptError("The temperature must be a number from 0 to 2.")
    return number.quantize(Decimal("0.01"))


def _max_tokens(value: int | None) -> int | None:
    if value is None:
        return None
    if not 1 <= value <= MAX_OUTPUT_TOKENS:
        raise PromptError(f"Max output tokens must be from 1 to {MAX_OUTPUT_TOKENS:,}.")
    return value


def _model_name(name: str) -> str:
    name = (name or "").strip()
    if not name:
        return ""
    available = model_names_available()
    if available is not None and name not in available:
        raise PromptError(f"There is no model named {name!r} (pick one of the models offered).")
    return name


def _template(text: str) -> tuple[str, list[str]]:
    """The template and its variables; ``TemplateInvalid`` (a ``PromptError``) names the line."""
    text = (text or "").replace("\r\n", "\n")
    if not text.strip():
        raise PromptError("The template cannot be empty.")
    limit = settings.TOLLGATE_PROMPT_MAX_CHARS
    if len(text) > limit:
        raise PromptError(
            f"The template is too long ({len(text):,} characters; at most {limit:,})."
        )
    try:
        return text, template_check(text)
    except PromptTemplateError as error:  # TemplateInvalid: its line and Jinja's message
        raise PromptError(f"The template does not compile. {error}") from None


def _note(note: str) -> str:
    note = " ".join((note or "").split())
    if len(note) > NOTE_CHARS:
        raise PromptError(f"The change note is too long ({NOTE_CHARS} characters at most).")
    return note


def _label_name(name: str) -> str:
    name = (name or "").strip().lower()
    if name == LATEST:
        raise PromptError('"latest" is not a label: it always means the newest version.')
    if not LABEL_RE.fullmatch(name):
        raise PromptError(
            "A label is 1 to 40 lowercase letters, digits, -, _ or ., starting with a letter "
            "or digit."
        )
    return name


def _sharing(
    user: Any, visibility: str, group_ids: Iterable[int], *, admin: bool, what: str = "prompt"
) -> tuple[str, list[Group]]:
    """The visibility and groups asked for, if ``user`` may share that way
    (``accounts.sharing.sharing_check``); ``PromptError`` otherwise."""
    try:
        return sharing_check(
            user=user, visibility=visibility, group_ids=group_ids, what=what, admin=admin
        )
    except SharingRefused as refused:
        raise PromptError(str(refused)) from None


def prompt_input_check(
    *,
    user: Any,
    admin: bool = False,
    prompt_id: int | None = None,
    owner_id: int | None = None,
    name: str | None = None,
    command: str | None = None,
    template: str | None = None,
    model_name: str = "",
    temperature: Decimal | float | str | None = None,
    max_output_tokens: int | None = None,
    change_note: str = "",
    visibility: str | None = None,
    group_ids: Iterable[int] = (),
    labels: Sequence[str] = (),
) -> None:
    """Check what a form is about to hand to the services, by their own rules (for
    a form that must show a refusal before it saves: Django admin's). Fields left
    ``None`` are not checked. Raises ``PromptError``."""
    if name is not None:
        _name(name)
    if command is not None:
        _command(command, owner_id=owner_id, prompt_id=prompt_id)
    if template is not None:
        _template(template)
    _model_name(model_name)
    _temperature(temperature)
    _max_tokens(max_output_tokens)
    _note(change_note)
    if visibility is not None:
        _sharing(user, visibility, group_ids, admin=admin)
    for label in labels:
        _label_name(label)


# -- writes -----------------------------------------------------------------------------


def _version_insert(
    *,
    prompt: Prompt,
    user: Any,
    template: str,
    variables: list[str],
    model_name: str,
    temperature: Decimal | None,
    max_output_tokens: int | None,
    change_note: str,
    number: int | None = None,
) -> PromptVersion:
    """Insert the next version of locked ``prompt`` (or ``number``)."""
    if number is None:
        latest = PromptVersion.objects.filter(prompt=prompt).aggregate(n=Max("number"))["n"]
        number = (latest or 0) + 1
    author = user if user is not None and getattr(user, "is_authenticated", False) else None
    return PromptVersion.objects.create(
        prompt=prompt,
        number=number,
        template=template,
        variables=variables,
        model_name=model_name,
        temperature=temperature,
        max_output_tokens=max_output_tokens,
        change_note=change_note,
        author=author,
    )


def _label_set(*, prompt: Prompt, name: str, version: PromptVersion, user: Any) -> bool:
    """Point label ``name`` of locked ``prompt`` at ``version``; audit the move.
    Whether anything changed (a label already there is not moved again)."""
    label = PromptLabel.objects.filter(prompt=prompt, name=name).select_related("version").first()
    before = label.version.number if label else None
    if label is not None and label.version_id == version.pk:
        return False
    by = user if user is not None and getattr(user, "is_authenticated", False) else None
    if label is None:
        PromptLabel.objects.create(prompt=prompt, name=name, version=version, updated_by=by)
    else:
        label.version, label.updated_by = version, by
        label.save(update_fields=["version", "updated_by", "updated_at"])
    audit_record(
        action="prompt.label_moved",
        actor=by,
        target_type="prompt",
        target_id=prompt.pk,
        data={"label": name, "from_version": before, "to_version": version.number},
    )
    return True


def _version_created(prompt: Prompt, version: PromptVersion, user: Any) -> None:
    audit_record(
        action="prompt.version_created",
        actor=version.author,
        target_type="prompt",
        target_id=prompt.pk,
        data={
            "version": version.number,
            "version_id": version.pk,
            "variables": version.variables,
            "change_note": version.change_note,
            "chars": len(version.template),
        },
    )


def _locked(*, user: Any, prompt_id: int, admin: bool) -> Prompt:
    """Lock the prompt ``user`` may change (its owner, or an administrator in admin)."""
    if admin:
        prompt = Prompt.objects.select_for_update().filter(pk=prompt_id).first()
        if prompt is None:
            raise PromptNotFound("Prompt not found.")
        return prompt
    return prompt_get_own(user=user, prompt_id=prompt_id, lock=True)


def prompt_create(
    *,
    user: Any,
    name: str,
    command: str,
    template: str,
    kind: str = Prompt.Kind.TEMPLATE,
    description: str = "",
    model_name: str = "",
    temperature: Decimal | float | str | None = None,
    max_output_tokens: int | None = None,
    change_note: str = "",
    visibility: str = Prompt.Visibility.PRIVATE,
    group_ids: Iterable[int] = (),
    admin: bool = False,
    owner: Any = None,
) -> Prompt:
    """Create a prompt owned by ``user`` with its version 1, labelled ``production``.

    With ``admin`` (Django admin), owned by ``owner`` instead (``None``: no one,
    the deployment's own).
    Raises ``PromptError`` (``TemplateInvalid`` text with the line for a template
    that does not compile, a command taken or reserved, sharing not allowed).
    Audited: ``prompt.created``, ``prompt.version_created``, ``prompt.label_moved``.
    """
    owner = owner if admin else user
    owner_id = owner.pk if owner is not None else None
    name = _name(name)
    command = _command(command, owner_id=owner_id)
    kind = _kind(kind)
    description = " ".join((description or "").split())[:DESCRIPTION_CHARS]
    template, variables = _template(template)
    fields: dict[str, Any] = {
        "model_name": _model_name(model_name),
        "temperature": _temperature(temperature),
        "max_output_tokens": _max_tokens(max_output_tokens),
        "change_note": _note(change_note) or "First version",
    }
    visibility, groups = _sharing(user, visibility, group_ids, admin=admin)
    with transaction.atomic(), audit_deferred():
        prompt = Prompt.objects.create(
            name=name,
            command=command,
            kind=kind,
            description=description,
            owner=owner,
            visibility=visibility,
        )
        prompt.groups.set(groups)
        version = _version_insert(
            prompt=prompt, user=user, template=template, variables=variables, **fields
        )
        audit_record(
            action="prompt.created",
            actor=user,
            target_type="prompt",
            target_id=prompt.pk,
            data={
                "name": name,
                "command": command,
                "kind": kind,
                "owner_id": owner_id,
                "visibility": visibility,
                "groups": [g.pk for g in groups],
            },
        )
        _version_created(prompt, version, user)
        _label_set(prompt=prompt, name=DEFAULT_LABEL, version=version, user=user)
    return prompt


def prompt_update(
    *,
    user: Any,
    prompt_id: int,
    name: str,
    command: str,
    description: str = "",
    admin: bool = False,
) -> Prompt:
    """Rename a prompt, change its command or description (not versioned; its
    text is). Raises ``PromptNotFound``, ``PromptReadOnly``, ``PromptError``.
    Audited (``prompt.updated``) when something changed."""
    with transaction.atomic(), audit_deferred():
        prompt = _locked(user=user, prompt_id=prompt_id, admin=admin)
        changes: dict[str, Any] = {}
        new = {
            "name": _name(name),
            "command": _command(command, owner_id=prompt.owner_id, prompt_id=prompt.pk),
            "description": " ".join((description or "").split())[:DESCRIPTION_CHARS],
        }
        for field_name, value in new.items():
            if getattr(prompt, field_name) != value:
                changes[field_name] = {"from": getattr(prompt, field_name), "to": value}
                setattr(prompt, field_name, value)
        if changes:
            prompt.save(update_fields=[*changes, "updated_at"])
            audit_record(
                action="prompt.updated",
                actor=user,
                target_type="prompt",
                target_id=prompt.pk,
                data=changes,
            )
    return prompt


def prompt_share(
    *,
    user: Any,
    prompt_id: int,
    visibility: str,
    group_ids: Iterable[int] = (),
    admin: bool = False,
) -> Prompt:
    """Set who can see and use a prompt: its owner only, members of ``group_ids``
    (groups ``user`` belongs to, unless staff), or everyone (staff only).
    Audited (``prompt.shared``)."""
    visibility, groups = _sharing(user, visibility, group_ids, admin=admin)
    with transaction.atomic(), audit_deferred():
        prompt = _locked(user=user, prompt_id=prompt_id, admin=admin)
        before = {
            "visibility": prompt.visibility,
            "groups": sorted(prompt.groups.values_list("pk", flat=True)),
        }
        prompt.visibility = visibility
        prompt.save(update_fields=["visibility", "updated_at"])
        prompt.groups.set(groups)
        audit_record(
            action="prompt.shared",
            actor=user,
            target_type="prompt",
            target_id=prompt.pk,
            data={
                "from": before,
                "to": {"visibility": visibility, "groups": [g.pk for g in groups]},
            },
        )
    return prompt


def prompt_version_create(
    *,
    user: Any,
    prompt_id: int,
    template: str,
    model_name: str = "",
    temperature: Decimal | float | str | None = None,
    max_output_tokens: int | None = None,
    change_note: str = "",
    labels: Sequence[str] = (DEFAULT_LABEL,),
    admin: bool = False,
) -> PromptVersion:
    """Save an edit as the prompt's next version (n + 1; versions are never changed)
    and point ``labels`` at it (by default ``production``; ``()`` for none).

    Raises ``PromptNotFound``, ``PromptReadOnly``, ``PromptError`` (a template
    that does not compile: its line and Jinja's message). Audited:
    ``prompt.version_created``, and ``prompt.label_moved`` per label moved.
    """
    template, variables = _template(template)
    fields: dict[str, Any] = {
        "model_name": _model_name(model_name),
        "temperature": _temperature(temperature),
        "max_output_tokens": _max_tokens(max_output_tokens),
        "change_note": _note(change_note),
    }
    names = [_label_name(label) for label in labels]
    with transaction.atomic(), audit_deferred():
        prompt = _locked(user=user, prompt_id=prompt_id, admin=admin)
        version = _version_insert(
            prompt=prompt, user=user, template=template, variables=variables, **fields
        )
        _version_created(prompt, version, user)
        for name in names:
            _label_set(prompt=prompt, name=name, version=version, user=user)
        prompt.save(update_fields=["updated_at"])
    return version


def prompt_edit(
    *,
    user: Any,
    prompt_id: int,
    name: str,
    command: str,
    description: str,
    template: str,
    model_name: str = "",
    temperature: Decimal | float | str | None = None,
    max_output_tokens: int | None = None,
    change_note: str = "",
    labels: Sequence[str] = (DEFAULT_LABEL,),
) -> PromptVersion:
    """The prompts page's edit: ``prompt_update`` and ``prompt_version_create`` in
    one transaction (both or neither). Raises and audits what they do."""
    with transaction.atomic():
        prompt_update(
            user=user, prompt_id=prompt_id, name=name, command=command, description=description
        )
        return prompt_version_create(
            user=user,
            prompt_id=prompt_id,
            template=template,
            model_name=model_name,
            temperature=temperature,
            max_output_tokens=max_output_tokens,
            change_note=change_note,
            labels=labels,
        )


def prompt_label_move(
    *, user: Any, prompt_id: int, label: str, number: int, admin: bool = False
) -> PromptLabel:
    """Point label ``label`` (created if new) at version ``number`` of the prompt.

    Raises ``PromptNotFound`` (also for a version it does not have),
    ``PromptReadOnly``, ``PromptError`` (a label name not allowed, ``latest``).
    Audited (``prompt.label_moved``, with the version it pointed at before).
    """
    name = _label_name(label)
    with transaction.atomic(), audit_deferred():
        prompt = _locked(user=user, prompt_id=prompt_id, admin=admin)
        version = PromptVersion.objects.filter(prompt=prompt, number=number).first()
        if version is None:
            raise PromptNotFound(f"{prompt.name} has no version {number}.")
        _label_set(prompt=prompt, name=name, version=version, user=user)
        return PromptLabel.objects.get(prompt=prompt, name=name)


def prompt_label_delete(*, user: Any, prompt_id: int, label: str, admin: bool = False) -> None:
    """Remove a label (``production`` stays: conversations follow it by default).
    Audited (``prompt.label_deleted``)."""
    name = _label_name(label)
    if name == DEFAULT_LABEL:
        raise PromptError(f"The {DEFAULT_LABEL} label cannot be removed; move it instead.")
    with transaction.atomic(), audit_deferred():
        prompt = _locked(user=user, prompt_id=prompt_id, admin=admin)
        row = PromptLabel.objects.filter(prompt=prompt, name=name).select_related("version")
        found = row.first()
        if found is None:
            raise PromptNotFound(f"{prompt.name} has no label {name!r}.")
        found.delete()
        audit_record(
            action="prompt.label_deleted",
            actor=user,
            target_type="prompt",
            target_id=prompt.pk,
            data={"label": name, "version": found.version.number},
        )


def prompt_version_restore(
    *,
    user: Any,
    prompt_id: int,
    number: int,
    labels: Sequence[str] = (DEFAULT_LABEL,),
    admin: bool = False,
) -> PromptVersion:
    """Restore version ``number``: copy it, parameters too, into a new version
    (n + 1: history is never rewritten) and point ``labels`` at the copy.

    Raises ``PromptNotFound``, ``PromptReadOnly``. Audited:
    ``prompt.version_restored`` (from which number to which), and
    ``prompt.label_moved`` per label moved.
    """
    names = [_label_name(label) for label in labels]
    with transaction.atomic(), audit_deferred():
        prompt = _locked(user=user, prompt_id=prompt_id, admin=admin)
        old = PromptVersion.objects.filter(prompt=prompt, number=number).first()
        if old is None:
            raise PromptNotFound(f"{prompt.name} has no version {number}.")
        version = _version_insert(
            prompt=prompt,
            user=user,
            template=old.template,
            variables=old.variables,
            model_name=old.model_name,
            temperature=old.temperature,
            max_output_tokens=old.max_output_tokens,
            change_note=f"Restored version {old.number}",
        )
        audit_record(
            action="prompt.version_restored",
            actor=user,
            target_type="prompt",
            target_id=prompt.pk,
            data={"from_version": old.number, "version": version.number, "version_id": version.pk},
        )
        for name in names:
            _label_set(prompt=prompt, name=name, version=version, user=user)
        prompt.save(update_fields=["updated_at"])
    return version


def prompt_delete(*, user: Any, prompt_id: int, admin: bool = False) -> None:
    """Delete a prompt with its versions and labels (its owner). Conversations
    that used it as their system prompt fall back to the default one; runs keep
    the text and parameters they recorded. Audited (``prompt.deleted``)."""
    with transaction.atomic(), audit_deferred():
        prompt = _locked(user=user, prompt_id=prompt_id, admin=admin)
        data = {"name": prompt.name, "command": prompt.command, "owner_id": prompt.owner_id}
        prompt.delete()
        audit_record(
            action="prompt.deleted",
            actor=user,
            target_type="prompt",
            target_id=prompt_id,
            data=data,
        )


def reformulation_prompt_set(*, user: Any, prompt_id: int | None) -> None:
    """Reformulate ``user``'s drafts with prompt ``prompt_id`` (one they may see), or
    with the deployment's ``/reformulate`` again (``None``). Audited
    (``prompt.reformulation_chosen``)."""
    if prompt_id is not None:
        prompt_get(user=user, prompt_id=prompt_id)  # PromptNotFound when not visible
    with transaction.atomic(), audit_deferred():
        PromptPreference.objects.update_or_create(
            user=user, defaults={"reformulation_prompt_id": prompt_id}
        )
        audit_record(
            action="prompt.reformulation_chosen",
            actor=user,
            target_type="prompt",
            target_id=prompt_id or "",
            data={"prompt_id": prompt_id},
        )


# -- import -----------------------------------------------------------------------------


class _VersionFile(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    number: int = Field(ge=1)
    template: str
    model: str = ""
    temperature: str | None = None
    max_output_tokens: int | None = None
    change_note: str = ""


class _PromptFile(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    format: Literal["tollgate.prompt/1"]
    name: str
    command: str
    description: str = ""
    kind: str
    versions: list[_VersionFile] = Field(min_length=1, max_length=1000)
    labels: dict[str, int] = Field(default_factory=dict)


def _import_error(error: ValidationError) -> str:
    first = error.errors(include_url=False)[0]
    where = ".".join(str(part) for part in first["loc"])
    return f"Not a prompt file: {where + ': ' if where else ''}{first['msg']}."


def _same(version: PromptVersion, row: _VersionFile) -> bool:
    return (
        version.template == row.template.replace("\r\n", "\n")
        and version.model_name == row.model
        and version.temperature == _temperature(row.temperature)
        and version.max_output_tokens == row.max_output_tokens
    )


def prompt_import(*, user: Any, data: Any) -> tuple[Prompt, int]:
    """Import an exported prompt (``selectors.prompt_export``'s ``EXPORT_FORMAT``)
    as ``user``'s own; ``(prompt, versions added)``.

    A new command makes a new private prompt with the file's versions (numbered
    1, 2, … with no gap). The command of a prompt ``user`` already owns brings
    it up to date, as a fast-forward: the versions it has must be the file's
    first ones, unchanged, and the file's later ones are added; then the labels
    are set as in the file. Every template is compiled first; nothing is
    written when anything is refused (``PromptError`` naming the version).
    Audited: ``prompt.imported``, with the version and label events.
    """
    try:
        parsed = _PromptFile.model_validate(data)
    except ValidationError as error:
        raise PromptError(_import_error(error)) from None
    rows = sorted(parsed.versions, key=lambda row: row.number)
    if [row.number for row in rows] != list(range(1, len(rows) + 1)):
        raise PromptError("The file's versions must be numbered 1, 2, 3, … with none missing.")
    checked: list[tuple[_VersionFile, str, list[str], dict[str, Any]]] = []
    for row in rows:
        try:
            template, variables = _template(row.template)
            fields: dict[str, Any] = {
                "model_name": _model_name(row.model),
                "temperature": _temperature(row.temperature),
                "max_output_tokens": _max_tokens(row.max_output_tokens),
                "change_note": _note(row.change_note),
            }
        except PromptError as error:
            raise PromptError(f"Version {row.number}: {error}") from None
        checked.append((row, template, variables, fields))
    labels = {_label_name(name): number for name, number in parsed.labels.items()}
    if any(number > len(rows) or number < 1 for number in labels.values()):
        raise PromptError("A label of the file points at a version the file does not have.")
    command = (parsed.command or "").strip().lstrip("/").lower()
    kind = _kind(parsed.kind)
    with transaction.atomic(), audit_deferred():
        prompt = (
            Prompt.objects.select_for_update().filter(owner=user, command=command).first()
            if COMMAND_RE.fullmatch(command)
            else None
        )
        if prompt is None:
            _row, template, _variables, fields = checked[0]
            prompt = prompt_create(
                user=user,
                name=parsed.name,
                command=command,
                kind=kind,
                description=parsed.description,
                template=template,
                **fields,
            )
            existing = {1: prompt.versions.get(number=1)}
            added = 1
        else:
            if prompt.kind != kind:
                raise PromptError(
                    f"Your prompt /{command} is a {prompt.get_kind_display().lower()}; "
                    "the file's is not."
                )
            existing = {v.number: v for v in prompt.versions.all()}
            added = 0
        for row, template, variables, fields in checked:
            have = existing.get(row.number)
            if have is not None:
                if not _same(have, row):
                    raise PromptError(
                        f"Version {row.number} of your /{command} differs from the file's: "
                        "import it under another command."
                    )
                continue
            if existing and row.number != max(existing) + 1:
                raise PromptError(f"Your /{command} has versions the file does not have.")
            version = _version_insert(
                prompt=prompt, user=user, template=template, variables=variables, **fields
            )
            existing[row.number] = version
            _version_created(prompt, version, user)
            added += 1
        if len(existing) > len(rows):
            raise PromptError(f"Your /{command} has versions the file does not have.")
        for name, number in sorted(labels.items()):
            _label_set(prompt=prompt, name=name, version=existing[number], user=user)
        audit_record(
            action="prompt.imported",
            actor=user,
            target_type="prompt",
            target_id=prompt.pk,
            data={"command": command, "versions": len(rows), "added": added},
        )
    return prompt, added


# -- chains -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChainStepInput:
    """One step as a form hands it to :func:`chain_save` (see ``ChainStep``)."""

    name: str
    template: str
    model_name: str = ""
    tools_allowed: bool = False
    judge_template: str = ""
    judge_model_name: str = ""
    max_rounds: int = 1


def _chain_template(text: str, *, allowed: frozenset[str], where: str) -> str:
    """``text`` if it compiles and uses only ``allowed`` variables; else ``PromptError``
    naming ``where`` (the step), the line and what is wrong."""
    text = (text or "").replace("\r\n", "\n")
    if not text.strip():
        raise PromptError(f"{where}: the template cannot be empty.")
    limit = settings.TOLLGATE_PROMPT_MAX_CHARS
    if len(text) > limit:
        raise PromptError(f"{where}: the template is too long (at most {limit:,} characters).")
    try:
        names = template_check(text)
    except PromptTemplateError as error:
        raise PromptError(f"{where}: the template does not compile. {error}") from None
    unknown = [name for name in names if name not in allowed]
    if unknown:
        raise PromptError(
            f"{where}: unknown variable {', '.join(unknown)} (use {', '.join(sorted(allowed))})."
        )
    return text


def _chain_steps(steps: Sequence[ChainStepInput]) -> list[ChainStepInput]:
    """The steps, checked and tidied (``PromptError`` naming the step otherwise)."""
    if not steps:
        raise PromptError("A chain needs at least one step.")
    if len(steps) > MAX_CHAIN_STEPS:
        raise PromptError(f"A chain may have at most {MAX_CHAIN_STEPS} steps.")
    out = []
    for number, step in enumerate(steps, start=1):
        where = f"Step {number}"
        name = " ".join((step.name or "").split()) or f"Step {number}"
        if len(name) > 80:
            raise PromptError(f"{where}: the name is too long (80 characters at most).")
        template = _chain_template(step.template, allowed=CHAIN_VARIABLES, where=where)
        judge = ""
        if (step.judge_template or "").strip():
            judge = _chain_template(
                step.judge_template, allowed=JUDGE_VARIABLES, where=f"{where}, judge"
            )
        if not 1 <= step.max_rounds <= MAX_ROUNDS:
            raise PromptError(f"{where}: rounds must be from 1 to {MAX_ROUNDS}.")
        if step.max_rounds > 1 and not judge:
            raise PromptError(f"{where}: more than one round needs a judge prompt.")
        try:
            model, judge_model = _model_name(step.model_name), _model_name(step.judge_model_name)
        except PromptError as error:
            raise PromptError(f"{where}: {error}") from None
        out.append(
            ChainStepInput(
                name=name,
                template=template,
                model_name=model,
                tools_allowed=bool(step.tools_allowed),
                judge_template=judge,
                judge_model_name=judge_model,
                max_rounds=step.max_rounds,
            )
        )
    return out


def chain_steps_check(*, steps: Sequence[ChainStepInput]) -> None:
    """Check steps as :func:`chain_save` would (for admin's forms, which save
    themselves). Raises ``PromptError`` naming the step, the line and the fault."""
    _chain_steps(steps)


def chain_save(
    *,
    user: Any,
    name: str,
    steps: Sequence[ChainStepInput],
    description: str = "",
    visibility: str = Prompt.Visibility.PRIVATE,
    group_ids: Iterable[int] = (),
    chain_id: int | None = None,
) -> Chain:
    """Create a chain owned by ``user`` (``chain_id`` ``None``) or replace the name,
    sharing and steps of one of theirs. Runs already started keep the steps they
    began with (``conversations.chains`` copies them). Audited (``chain.created``,
    ``chain.updated``).

    Raises ``PromptError`` (a name, step, template, model or sharing refused; the
    message names the step and the template's line), ``PromptNotFound`` /
    ``PromptReadOnly`` (``chain_id`` not theirs to change).
    """
    name = _name(name)
    description = " ".join((description or "").split())
    if len(description) > DESCRIPTION_CHARS:
        raise PromptError(f"The description is too long ({DESCRIPTION_CHARS} characters at most).")
    checked = _chain_steps(steps)
    visibility, groups = _sharing(user, visibility, group_ids, admin=False, what="chain")
    with transaction.atomic(), audit_deferred():
        if chain_id is None:
            chain = Chain.objects.create(
                owner=user, name=name, description=description, visibility=visibility
            )
        else:
            chain = chain_get_own(user=user, chain_id=chain_id)
            chain = Chain.objects.select_for_update().get(pk=chain.pk)
            chain.name, chain.description, chain.visibility = name, description, visibility
            chain.save(update_fields=["name", "description", "visibility", "updated_at"])
            chain.steps.all().delete()
        chain.groups.set(groups)
        ChainStep.objects.bulk_create(
            ChainStep(chain=chain, position=position, **step.__dict__)
            for position, step in enumerate(checked)
        )
        audit_record(
            action="chain.created" if chain_id is None else "chain.updated",
            actor=user,
            target_type="chain",
            target_id=chain.pk,
            data={"name": name, "steps": len(checked), "visibility": visibility},
        )
    return chain


def chain_delete(*, user: Any, chain_id: int) -> None:
    """Delete one of ``user``'s chains with its steps (runs keep what they copied).
    Audited (``chain.deleted``). Raises ``PromptNotFound``, ``PromptReadOnly``."""
    with transaction.atomic(), audit_deferred():
        chain = chain_get_own(user=user, chain_id=chain_id)
        Chain.objects.filter(pk=chain.pk).delete()
        audit_record(
            action="chain.deleted",
            actor=user,
            target_type="chain",
            target_id=chain_id,
            data={"name": chain.name},
        )
