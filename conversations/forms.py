"""Forms of the chat pages' posts and inputs: types, ranges and NUL characters.

What the services check (an empty or too long message, a title's length, a
model that is disabled) stays theirs, with their messages; a form checks only
what a service cannot be handed: an id that is not a whole number in range, a
value outside its choices, text with a NUL character (Django's ``CharField``
refuses it), which PostgreSQL cannot store.
"""

from __future__ import annotations

from typing import Any, cast

from django import forms
from django.core.exceptions import ValidationError

from accounts.sharing import groups_to_share_with
from conversations.agents import agents_visible
from conversations.models import AgentProfile, UserPreferences
from conversations.selectors import model_configs_chat
from project.inbound import id_parse
from prompts.models import Prompt
from prompts.selectors import prompts_visible
from tools.selectors import tools_for_user


class IdField(forms.Field):
    """A row id: ASCII digits for a whole number from 1 to the largest ``bigint``
    (``project.inbound.id_parse``, the rule WebSocket frames follow too); not
    ``"²"``, ``" 7"`` or ``"7.0"``. Empty is ``None``."""

    default_error_messages = {"invalid": "Expected an id (a whole number from 1)."}

    def to_python(self, value: object) -> int | None:
        if value in self.empty_values:
            return None
        parsed = id_parse(value)
        if parsed is None:
            raise ValidationError(self.error_messages["invalid"], code="invalid")
        return parsed


class IdListField(forms.Field):
    """Row ids sent under one name (checkboxes): each as ``IdField`` takes it; at
    most ``MAX_IDS``. Empty is ``[]``."""

    MAX_IDS = 50
    widget = forms.MultipleHiddenInput
    default_error_messages = {
        "invalid": "Expected ids (whole numbers from 1).",
        "too_many": "Too many ids.",
    }

    def to_python(self, value: object) -> list[int]:
        if value in self.empty_values:
            return []
        values = value if isinstance(value, list | tuple) else [value]
        if len(values) > self.MAX_IDS:
            raise ValidationError(self.error_messages["too_many"], code="too_many")
        ids = [id_parse(item) for item in values]
        if any(item is None for item in ids):
            raise ValidationError(self.error_messages["invalid"], code="invalid")
        return [item for item in ids if item is not None]


class ConversationStartForm(forms.Form):
    """``POST /c/new``: the model picked (the default one when empty) and a first message."""

    model_config = IdField(required=False)
    content = forms.CharField(required=False, strip=False)


class MessageForm(forms.Form):
    """``POST /c/<id>/send``: the message (emptiness and length: ``message_send``);
    ``compare`` on: the models to answer it side by side (how many: the service's
    to check); or the chain to run it through (whether the user may: ``message_send``)."""

    content = forms.CharField(required=False, strip=False)
    chain_id = IdField(required=False)
    compare = forms.BooleanField(required=False)
    compare_models = IdListField(required=False)
    attachments = IdListField(required=False)

    def compare_ids(self) -> list[int] | None:
        """The models to compare when Compare is on (``[]``: none picked), else ``None``."""
        return list(self.cleaned_data["compare_models"]) if self.cleaned_data["compare"] else None


class AttachmentUploadForm(forms.Form):
    """``POST /attachments/upload``: one file for the composer, and the documents
    its chips hold already (the per-message limit: ``attachments.attachment_upload``)."""

    file = forms.FileField(
        allow_empty_file=False, error_messages={"required": "Choose a file to attach."}
    )
    attached = IdListField(required=False)


class CompareSettingsForm(forms.Form):
    """``POST /c/<id>/compare-settings``: the summary's model, prompt and whether it is
    written; empty: the deployment's (``services.compare_settings_set``)."""

    SHOWN = {"": None, "yes": True, "no": False}

    summary_model = IdField(required=False)
    summary_prompt = IdField(required=False)
    summary_shown = forms.ChoiceField(
        required=False, choices=[("", "Default"), ("yes", "Yes"), ("no", "No")]
    )

    def shown(self) -> bool | None:
        return self.SHOWN[self.cleaned_data["summary_shown"]]


class RenameForm(forms.Form):
    """``POST /c/<id>/rename`` (emptiness and length: ``conversation_rename``)."""

    title = forms.CharField(required=False, strip=False)


class ModelPickForm(forms.Form):
    """``POST /c/<id>/model``."""

    model_config = IdField(error_messages={"required": "Pick a model."})


class ArchiveForm(forms.Form):
    """``POST /c/<id>/archive``: ``archived`` is 1 (archive, also when empty) or 0 (unarchive)."""

    archived = forms.ChoiceField(choices=[("1", "Archive"), ("0", "Unarchive")], required=False)


class PinForm(forms.Form):
    """``POST /c/<id>/pin``: ``pinned`` is 1 (pin, also when empty) or 0 (unpin)."""

    pinned = forms.ChoiceField(choices=[("1", "Pin"), ("0", "Unpin")], required=False)


class EarlierForm(forms.Form):
    """``GET /c/<id>/earlier?before=<message id>[&cut=<message id>]``."""

    before = IdField(
        error_messages=dict.fromkeys(("required", "invalid"), "'before' must be a message id.")
    )
    #: Where the history sent to the model begins (``selectors.Timeline.context_cut``).
    cut = IdField(required=False, error_messages={"invalid": "'cut' must be a message id."})


class ConversationSettingsForm(forms.Form):
    """``GET``/``POST /c/<id>/settings``: where the system prompt comes from, and the
    parameters (checked further by ``services.conversation_settings_set``).

    ``ref`` names the library prompt's version: ``label:<name>`` (followed) or
    ``version:<id>`` (pinned). The prompt's variables come as ``var_<name>``
    fields (``variables``)."""

    source = forms.ChoiceField(
        choices=[("default", "Default"), ("library", "From the prompt library"), ("text", "Own")],
        initial="default",
    )
    system_prompt = IdField(required=False)
    ref = forms.CharField(required=False, max_length=60)
    text = forms.CharField(required=False, strip=False)
    temperature = forms.DecimalField(
        required=False, min_value=0, max_value=2, max_digits=3, decimal_places=2
    )
    max_output_tokens = forms.IntegerField(required=False, min_value=1, max_value=1_000_000)

    VARIABLE_PREFIX = "var_"

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        for key in list(self.data)[:60]:
            if key.startswith(self.VARIABLE_PREFIX) and key[4:].isidentifier():
                self.fields[key] = forms.CharField(required=False, strip=False)

    def variables(self) -> dict[str, str]:
        """The ``var_<name>`` values, by name."""
        prefix = self.VARIABLE_PREFIX
        return {
            key.removeprefix(prefix): value
            for key, value in self.cleaned_data.items()
            if key.startswith(prefix) and value is not None
        }

    def pinned(self) -> tuple[str, int | None]:
        """``(label, version id)`` from ``ref``: one of them set, or neither."""
        kind, _, value = (self.cleaned_data.get("ref") or "").partition(":")
        if kind == "version":
            return "", id_parse(value)
        return (value if kind == "label" else ""), None


class PreferencesForm(forms.Form):
    """``POST /settings/``: the user's defaults (checked further by ``preferences_set``)."""

    default_model = IdField(required=False, label="Default model")
    default_system_prompt = forms.CharField(
        required=False, strip=False, label="Default system prompt"
    )
    theme = forms.ChoiceField(choices=UserPreferences.Theme.choices, label="Theme")
    send_key = forms.ChoiceField(choices=UserPreferences.SendKey.choices, label="Send with")


class AgentForm(forms.Form):
    """``/agents/new`` and ``/agents/<id>/``: an agent's settings, offered from what
    ``user`` may use and see (``services.agent_save`` checks them again)."""

    name = forms.CharField(max_length=80)
    description = forms.CharField(max_length=300, required=False)
    visibility = forms.ChoiceField(choices=AgentProfile.Visibility.choices)
    groups = forms.TypedMultipleChoiceField(
        coerce=int,
        required=False,
        choices=(),
        widget=forms.CheckboxSelectMultiple,
        label="Shared with groups",
        help_text="When shared with groups.",
    )
    instructions = forms.CharField(widget=forms.Textarea(attrs={"rows": 5}), required=False)
    prompt = forms.ModelChoiceField(
        queryset=Prompt.objects.none(),
        required=False,
        label="Instructions from the prompt library",
        help_text="A system prompt, followed at its label; else the text above.",
    )
    prompt_label = forms.CharField(max_length=40, required=False, label="Label followed")
    model_config = forms.ModelChoiceField(
        queryset=model_configs_chat(),
        required=False,
        label="Model",
        help_text="Empty: the conversation's model.",
    )
    temperature = forms.DecimalField(
        max_digits=3, decimal_places=2, min_value=0, max_value=2, required=False
    )
    max_output_tokens = forms.IntegerField(min_value=1, required=False)
    tools = forms.MultipleChoiceField(
        choices=(), required=False, widget=forms.CheckboxSelectMultiple
    )
    handoff_targets = forms.ModelMultipleChoiceField(
        queryset=AgentProfile.objects.none(),
        required=False,
        widget=forms.CheckboxSelectMultiple,
        label="May hand off to",
    )
    max_handoffs = forms.IntegerField(min_value=0, max_value=20, initial=3)
    agent_tools = forms.ModelMultipleChoiceField(
        queryset=AgentProfile.objects.none(),
        required=False,
        widget=forms.CheckboxSelectMultiple,
        label="May call as tools",
        help_text="Each answers a task in a sub-run of its own; its answer is the result.",
    )
    max_steps = forms.IntegerField(
        min_value=1,
        max_value=50,
        required=False,
        label="Max model calls per run",
        help_text="Empty: the default.",
    )
    transfer = forms.ChoiceField(
        choices=AgentProfile.Transfer.choices,
        label="When handed a conversation, read",
    )

    def __init__(self, *args: Any, user: Any, agent: AgentProfile | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        fields = self.fields
        cast(forms.TypedMultipleChoiceField, fields["groups"]).choices = [
            (g.pk, g.name) for g in groups_to_share_with(user=user)
        ]
        prompt_field = cast(forms.ModelChoiceField, fields["prompt"])
        prompt_field.queryset = prompts_visible(user=user).filter(kind=Prompt.Kind.SYSTEM)
        targets = agents_visible(user=user)
        if agent is not None:
            targets = targets.exclude(pk=agent.pk)
        cast(forms.ModelMultipleChoiceField, fields["handoff_targets"]).queryset = targets
        cast(forms.ModelMultipleChoiceField, fields["agent_tools"]).queryset = targets
        cast(forms.MultipleChoiceField, fields["tools"]).choices = [
            (spec.name, spec.name) for spec in tools_for_user(user=user)
        ]
