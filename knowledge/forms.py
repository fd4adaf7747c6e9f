"""Forms of the knowledge pages."""

from __future__ import annotations

from django import forms


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
