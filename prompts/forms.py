"""Forms of the prompts pages: types, ranges and NUL characters; the rest is the
services' to check (``prompts.services``), with their messages."""

from __future__ import annotations

from typing import Any, cast

from django import forms

from prompts.models import DEFAULT_LABEL, Prompt
from prompts.selectors import model_names_available

#: The largest prompt file (characters) the import form reads.
IMPORT_MAX_CHARS = 2_000_000


class VersionFields(forms.Form):
    """A version's text and parameters (``prompt_version_create``)."""

    template = forms.CharField(strip=False, widget=forms.Textarea(attrs={"rows": 12}))
    model_name = forms.ChoiceField(label="Model", required=False)
    temperature = forms.DecimalField(
        required=False, min_value=0, max_value=2, max_digits=3, decimal_places=2
    )
    max_output_tokens = forms.IntegerField(required=False, min_value=1, max_value=1_000_000)
    change_note = forms.CharField(required=False, max_length=300)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        names = model_names_available() or []
        field = cast(forms.ChoiceField, self.fields["model_name"])
        field.choices = [("", "— (the conversation's)")] + [(n, n) for n in names]

    def version_data(self) -> dict[str, Any]:
        data = self.cleaned_data
        return {
            "template": data["template"],
            "model_name": data.get("model_name") or "",
            "temperature": data.get("temperature"),
            "max_output_tokens": data.get("max_output_tokens"),
            "change_note": data.get("change_note") or "",
        }


class PromptCreateForm(VersionFields):
    """``POST /prompts/new``."""

    name = forms.CharField(max_length=120)
    command = forms.CharField(max_length=41, help_text="Typed after / in the chat.")
    description = forms.CharField(required=False, max_length=300)
    kind = forms.ChoiceField(choices=Prompt.Kind.choices, initial=Prompt.Kind.TEMPLATE)
    field_order = ("name", "command", "kind", "description", "template")


class PromptEditForm(VersionFields):
    """``POST /prompts/<id>/edit``: the prompt's name, command and description, and
    its text as the next version (``move_production``: point the label at it)."""

    name = forms.CharField(max_length=120)
    command = forms.CharField(max_length=41)
    description = forms.CharField(required=False, max_length=300)
    move_production = forms.BooleanField(
        required=False, initial=True, label=f"Point {DEFAULT_LABEL} at the new version"
    )
    field_order = ("name", "command", "description", "template")


class LabelForm(forms.Form):
    label = forms.CharField(max_length=40)
    number = forms.IntegerField(min_value=1)


class RestoreForm(forms.Form):
    number = forms.IntegerField(min_value=1)


class ShareForm(forms.Form):
    visibility = forms.ChoiceField(choices=Prompt.Visibility.choices)
    groups = forms.TypedMultipleChoiceField(coerce=int, required=False, choices=())

    def __init__(self, *args: Any, group_choices: list[tuple[int, str]], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        field = cast(forms.ChoiceField, self.fields["groups"])
        field.choices = group_choices


class DiffForm(forms.Form):
    a = forms.IntegerField(min_value=1)
    b = forms.IntegerField(min_value=1)


class ImportForm(forms.Form):
    file = forms.FileField(required=False)
    text = forms.CharField(required=False, strip=False, widget=forms.Textarea(attrs={"rows": 8}))

    def content(self) -> str:
        """The file's text (or the pasted text); ``forms.ValidationError`` if too large."""
        upload = self.cleaned_data.get("file")
        if upload is not None:
            if upload.size > IMPORT_MAX_CHARS:
                raise forms.ValidationError("The file is too large.")
            try:
                return upload.read().decode("utf-8")
            except UnicodeDecodeError:
                raise forms.ValidationError("The file is not UTF-8 text.") from None
        return self.cleaned_data.get("text") or ""


class EvaluationForm(forms.Form):
    """``POST /evaluations/new/<prompt id>``: two variants (a version and a model each),
    an optional judge prompt, and the dataset as CSV typed in or uploaded (the
    file wins); the services check the rest (``prompts.evaluations``)."""

    version_a = forms.TypedChoiceField(coerce=int, label="Version A")
    model_a = forms.ChoiceField(label="Model A")
    version_b = forms.TypedChoiceField(coerce=int, label="Version B")
    model_b = forms.ChoiceField(label="Model B")
    judge = forms.TypedChoiceField(coerce=int, required=False, empty_value=None,
                                   label="Judge prompt")  # fmt: skip
    dataset = forms.CharField(
        required=False,
        strip=False,
        label="Dataset (CSV)",
        widget=forms.Textarea(attrs={"rows": 8, "spellcheck": "false"}),
    )
    dataset_file = forms.FileField(required=False, label="or upload a CSV file")

    def __init__(
        self,
        *args: Any,
        versions: list[int],
        judges: list[tuple[int, str]],
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        names = [(n, n) for n in model_names_available() or []]
        numbers = [(n, f"v{n}") for n in versions]
        for name, choices in (("version_a", numbers), ("version_b", numbers),
                              ("model_a", names), ("model_b", names),
                              ("judge", [("", "— no judge"), *judges])):  # fmt: skip
            cast(forms.ChoiceField, self.fields[name]).choices = choices

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        upload = data.get("dataset_file")
        if upload is not None:
            if upload.size > IMPORT_MAX_CHARS:
                raise forms.ValidationError("The CSV file is too large.")
            try:
                data["dataset"] = upload.read().decode("utf-8")
            except UnicodeDecodeError:
                raise forms.ValidationError("The CSV file is not UTF-8 text.") from None
        if "\x00" in data.get("dataset", ""):
            raise forms.ValidationError("The dataset contains a NUL character.")
        return data


class ChainForm(ShareForm):
    """``POST /prompts/chains/new`` and ``…/<id>/edit``: the chain's name, description
    and sharing; its steps are :class:`ChainStepForm` rows (``step-0-…``, ``step-1-…``)."""

    name = forms.CharField(max_length=120)
    description = forms.CharField(required=False, max_length=300)
    field_order = ("name", "description", "visibility", "groups")


class ChainStepForm(forms.Form):
    """One step of a chain form (prefix ``step-<n>``); a row left empty is no step."""

    name = forms.CharField(required=False, max_length=80)
    template = forms.CharField(
        required=False, strip=False, widget=forms.Textarea(attrs={"rows": 4})
    )
    model_name = forms.ChoiceField(label="Model", required=False)
    tools_allowed = forms.BooleanField(label="Tools allowed", required=False)
    judge_template = forms.CharField(
        label="Judge prompt", required=False, strip=False, widget=forms.Textarea(attrs={"rows": 3})
    )
    judge_model_name = forms.ChoiceField(label="Judge model", required=False)
    max_rounds = forms.IntegerField(label="Rounds at most", min_value=1, max_value=5, initial=1)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        names = [("", "— (the conversation's)")] + [(n, n) for n in model_names_available() or []]
        for name in ("model_name", "judge_model_name"):
            cast(forms.ChoiceField, self.fields[name]).choices = names

    @property
    def empty(self) -> bool:
        """Whether nothing was typed in this row (no name, template or judge prompt)."""
        data = self.data
        typed = ("name", "template", "judge_template")
        return not any(str(data.get(self.add_prefix(f), "")).strip() for f in typed)
