"""Forms of the knowledge pages."""

from __future__ import annotations

from django import forms

from tools.builtin.notes import MAX_VALUE_CHARS


class UploadForm(forms.Form):
    file = forms.FileField(allow_empty_file=False)
    collection = forms.IntegerField(required=False, min_value=1)


class CollectionForm(forms.Form):
    name = forms.CharField(max_length=120)


class ShareForm(forms.Form):
    groups = forms.TypedMultipleChoiceField(coerce=int, required=False, choices=())

    def __init__(
        self, *args: object, group_choices: list[tuple[int, str]], **kwargs: object
    ) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.fields["groups"].choices = group_choices  # type: ignore[attr-defined]


class MemoryForm(forms.Form):
    """A remembered note's new value (its key stays)."""

    value = forms.CharField(
        max_length=MAX_VALUE_CHARS, strip=False, widget=forms.Textarea(attrs={"rows": 2})
    )


class RecallForm(forms.Form):
    """A question to recall notes by meaning."""

    q = forms.CharField(max_length=1000, required=False, label="Recall")
