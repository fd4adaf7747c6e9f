"""The decision form (HTTP and WebSocket) and the argument editor built from a JSON Schema."""

from __future__ import annotations

import json
from typing import Any, cast

from django import forms
from django.core.exceptions import ValidationError

from approvals.models import ApprovalRequest
from project.inbound import InboundError, json_parse

ARG_PREFIX = "arg__"
#: Longest JSON text an editor field takes (as much as a model may send: tools.validation).
MAX_JSON_CHARS = 200_000


def _schema_properties(schema: Any) -> dict[str, dict]:
    if not isinstance(schema, dict):
        return {}
    props = schema.get("properties")
    if schema.get("type", "object") != "object" or not isinstance(props, dict):
        return {}
    return {k: v for k, v in props.items() if isinstance(v, dict)}


def _field_kind(spec: dict) -> str:
    if isinstance(spec.get("enum"), list) and spec["enum"]:
        return "enum"
    kind = spec.get("type")
    if isinstance(kind, list):
        kinds = [k for k in kind if k != "null"]
        kind = kinds[0] if len(kinds) == 1 else None
    if kind in {"string", "integer", "number", "boolean"}:
        return kind
    return "json"


class DecisionForm(forms.Form):
    """Validates a decision on one approval, from an HTML form or a WebSocket payload.

    Keys: ``decision`` (``approve`` | ``deny`` | ``edit`` = approve with the
    edited arguments | ``preview`` = show the diff, views only),
    ``arguments_hash`` (the 64-hex hash the card showed), ``reason``
    (optional, up to 2000 characters), ``always_allow`` (bool),
    ``edited_arguments`` (a JSON object as text, for API/WebSocket clients;
    with ``approve`` it is the edit), ``arguments_json`` (the editor's JSON
    textarea when the schema has no simple fields), and ``arg__<name>`` (one
    per top-level schema property, typed by the schema).

    After ``is_valid()``, ``cleaned_data["approve"]`` is a bool and
    ``cleaned_data["edited"]`` is the edited arguments dict or ``None``.
    """

    DECISIONS = (
        ("approve", "Approve"),
        ("deny", "Deny"),
        ("edit", "Approve with edited arguments"),
        ("preview", "Preview edits"),
    )

    decision = forms.ChoiceField(
        choices=DECISIONS,
        error_messages={"invalid_choice": "Choose approve, deny, edit or preview."},
    )
    arguments_hash = forms.RegexField(
        regex=r"^[0-9a-f]{64}$",
        error_messages={"invalid": "The arguments hash must be 64 lowercase hex digits."},
    )
    reason = forms.CharField(max_length=2000, required=False)
    always_allow = forms.BooleanField(required=False)
    edited_arguments = forms.CharField(required=False, max_length=MAX_JSON_CHARS, strip=False)
    arguments_json = forms.CharField(
        required=False,
        max_length=MAX_JSON_CHARS,
        strip=False,
        label="Arguments (JSON)",
        widget=forms.Textarea(attrs={"rows": 8, "class": "json"}),
    )

    def __init__(self, data: Any = None, *, approval: ApprovalRequest, **kwargs: Any) -> None:
        super().__init__(data, **kwargs)
        self.approval = approval
        current = approval.effective_arguments if isinstance(approval.arguments, dict) else {}
        schema = approval.arguments_schema or {}
        required = set(schema.get("required", [])) if isinstance(schema, dict) else set()
        self.arg_specs: dict[str, tuple[str, dict]] = {}
        for name, spec in _schema_properties(schema).items():
            kind = _field_kind(spec)
            field = self._make_field(name, kind, spec, name in required)
            initial = current.get(name) if isinstance(current, dict) else None
            if kind == "json" and name in current:
                field.initial = json.dumps(initial, indent=2, ensure_ascii=False)
            elif kind == "enum" and name in current:
                field.initial = json.dumps(initial)
            else:
                field.initial = initial
            field.widget.attrs.setdefault("data-kind", kind)
            self.fields[ARG_PREFIX + name] = field
            self.arg_specs[name] = (kind, spec)
        self.fields["arguments_json"].initial = json.dumps(
            approval.effective_arguments, indent=2, ensure_ascii=False
        )

    @staticmethod
    def _make_field(name: str, kind: str, spec: dict, required: bool) -> forms.Field:
        label = spec.get("title") or name
        help_text = spec.get("description", "")
        if kind == "enum":
            return forms.ChoiceField(
                label=label,
                help_text=help_text,
                required=False,
                choices=[("", "—")] + [(json.dumps(v), str(v)) for v in spec["enum"]],
            )
        if kind == "string":
            long = spec.get("maxLength", 0) > 200 or spec.get("format") == "textarea"
            return forms.CharField(
                label=label,
                help_text=help_text,
                required=False,
                strip=False,
                widget=forms.Textarea(attrs={"rows": 2}) if long else forms.TextInput(),
            )
        if kind == "integer":
            return forms.IntegerField(label=label, help_text=help_text, required=False)
        if kind == "number":
            return forms.FloatField(label=label, help_text=help_text, required=False)
        if kind == "boolean":
            return forms.BooleanField(label=label, help_text=help_text, required=False)
        return forms.CharField(
            label=f"{label} (JSON)",
            help_text=help_text,
            required=False,
            strip=False,
            widget=forms.Textarea(attrs={"rows": 3, "class": "json"}),
        )

    @property
    def arg_fields(self) -> list[forms.BoundField]:
        return [self[ARG_PREFIX + name] for name in self.arg_specs]

    def _parse_json_object(self, text: str, field: str) -> dict | None:
        try:
            value = json_parse(text, max_chars=MAX_JSON_CHARS)
        except InboundError as exc:
            self.add_error(field, str(exc))
            return None
        if not isinstance(value, dict):
            self.add_error(field, "The arguments must be a JSON object.")
            return None
        return value

    def _edited_from_fields(self) -> dict | None:
        original = self.approval.arguments if isinstance(self.approval.arguments, dict) else {}
        schema = self.approval.arguments_schema or {}
        required = set(schema.get("required", [])) if isinstance(schema, dict) else set()
        edited = dict(original)  # keys the schema does not describe stay as they were
        ok = True
        for name, (kind, _spec) in self.arg_specs.items():
            key = ARG_PREFIX + name
            value = self.cleaned_data.get(key)
            keep = name in original or name in required
            if kind == "json":
                if value in (None, ""):
                    edited.pop(name, None)
                    continue
                try:
                    edited[name] = json_parse(value, max_chars=MAX_JSON_CHARS)
                except InboundError as exc:
                    self.add_error(key, str(exc))
                    ok = False
            elif kind == "enum":
                if value in (None, ""):
                    edited.pop(name, None)
                else:
                    edited[name] = json.loads(value)
            elif kind == "boolean":
                if value or keep:
                    edited[name] = bool(value)
                else:
                    edited.pop(name, None)
            elif kind == "string":
                if value == "" and not keep:
                    edited.pop(name, None)
                else:
                    edited[name] = value or ""
            elif value is None:
                edited.pop(name, None)
            else:
                edited[name] = value
        return edited if ok else None

    def clean(self) -> dict[str, Any]:
        # Form.clean() returns self.cleaned_data, a dict (never None).
        cleaned = cast("dict[str, Any]", super().clean())
        decision = cleaned.get("decision")
        cleaned["approve"] = decision != "deny"
        cleaned["edited"] = None
        if decision in {"edit", "preview"}:
            if cleaned.get("edited_arguments"):
                cleaned["edited"] = self._parse_json_object(
                    cleaned["edited_arguments"], "edited_arguments"
                )
            elif self.arg_specs:
                cleaned["edited"] = self._edited_from_fields()
            elif cleaned.get("arguments_json"):
                cleaned["edited"] = self._parse_json_object(
                    cleaned["arguments_json"], "arguments_json"
                )
            else:
                self.add_error("edited_arguments", "Give the edited arguments.")
        elif decision == "approve" and cleaned.get("edited_arguments"):
            cleaned["edited"] = self._parse_json_object(
                cleaned["edited_arguments"], "edited_arguments"
            )
        if decision == "deny" and cleaned.get("always_allow"):
            raise ValidationError("“Always allow” goes with an approval, not a denial.")
        return cleaned


class ApprovalFilterForm(forms.Form):
    """Filters of the approvals page: status and tool."""

    status = forms.ChoiceField(
        choices=[("", "Any status"), *ApprovalRequest.Status.choices],
        required=False,
        error_messages={"invalid_choice": "Choose a status from the list."},
    )
    tool = forms.CharField(max_length=200, required=False)
