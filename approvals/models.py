"""Approval policies and approval requests (the audit trail is the ``audit`` app's).

The request's invocation is a foreign key down the layers, to
``tools.ToolInvocation``; the run and conversation, which belong to
``conversations`` above, are plain ids (docs/architecture.md: conversations
→ approvals → tools → accounts → audit → project).
"""

from __future__ import annotations

import fnmatch
import re
from typing import Any, ClassVar

from django.conf import settings
from django.contrib.auth.models import Group
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q
from django.utils import timezone

from approvals.canonical import arguments_hash as compute_arguments_hash
from approvals.conditions import parse_path
from approvals.guardrails import UNREDACTABLE, GuardrailConfigError, guardrail_config_check

GLOB_CHARS = "*?["
TOOL_PATTERN_RE = re.compile(r"^[A-Za-z0-9_.:/\-*?\[\]!]+$")

#: The most approvals a rule may ask for (the group's size is not known when the rule
#: is written; a request needing more people than can approve it only ends by denial
#: or expiry).
APPROVALS_REQUIRED_MAX = 10


# --- Policies --------------------------------------------------------------------


def tool_pattern_is_glob(pattern: str) -> bool:
    return any(c in pattern for c in GLOB_CHARS)


def tool_pattern_literal_prefix(pattern: str) -> int:
    """Length of the part of a glob before its first wildcard."""
    positions = [pattern.index(c) for c in GLOB_CHARS if c in pattern]
    return min(positions) if positions else len(pattern)


class ApprovalPolicy(models.Model):
    """One gate rule: who, which tool, action, optionally only when an argument matches.

    Subject: ``user``, or ``group``, or neither (everyone). ``conversation_id``
    narrows a user's rule to one conversation (the "always allow this tool in
    this conversation" button makes these). Precedence is documented on
    ``approvals.selectors.gate_evaluate`` and in ``docs/policies.md``.
    """

    class Action(models.TextChoices):
        ALLOW = "allow"
        ASK = "ask"
        DENY = "deny"

    class Operator(models.TextChoices):
        EQUALS = "equals"
        IN = "in"
        MATCHES = "matches", "matches (regular expression)"

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="approval_policies",
    )
    group = models.ForeignKey(
        Group, on_delete=models.CASCADE, null=True, blank=True, related_name="approval_policies"
    )
    conversation_id = models.BigIntegerField(
        null=True,
        blank=True,
        db_index=True,
        help_text="Only in this conversation (requires a user).",
    )
    tool_pattern = models.CharField(
        max_length=200, help_text="Exact tool name or a glob such as notes.* (case-sensitive)."
    )
    action = models.CharField(max_length=8, choices=Action.choices)
    condition_path = models.CharField(
        max_length=200,
        blank=True,
        help_text="Argument path such as path.to.key, items[0].name or $.key; blank: always.",
    )
    condition_operator = models.CharField(max_length=8, choices=Operator.choices, blank=True)
    condition_value = models.JSONField(
        null=True,
        blank=True,
        help_text="JSON: a value (equals), a list (in), or a regular expression string (matches).",
    )
    approvers_group = models.ForeignKey(
        Group,
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="approver_policies",
        help_text="Who decides requests this rule asks for; blank: the requester decides.",
    )
    four_eyes = models.BooleanField(
        "four eyes",
        default=False,
        help_text=(
            "The requester may never decide their own request: not as a member of the "
            "approvers group, not as staff or superuser. Needs an approvers group."
        ),
    )
    approvals_required = models.PositiveSmallIntegerField(
        default=1,
        validators=[MinValueValidator(1), MaxValueValidator(APPROVALS_REQUIRED_MAX)],
        help_text=(
            f"How many different people must approve (1 to {APPROVALS_REQUIRED_MAX}); "
            "one denial denies at once. More than 1 needs an approvers group."
        ),
    )
    expires_after_seconds = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="Seconds a request stays open; blank: TOLLGATE_APPROVAL_EXPIRY_SECONDS.",
    )
    enabled = models.BooleanField(default=True)
    description = models.TextField(blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ("id",)
        verbose_name_plural = "approval policies"
        constraints: ClassVar = [
            models.CheckConstraint(
                condition=Q(user__isnull=True) | Q(group__isnull=True),
                name="approvals_policy_user_or_group",
            ),
            models.CheckConstraint(
                condition=Q(conversation_id__isnull=True) | Q(user__isnull=False),
                name="approvals_policy_conversation_needs_user",
            ),
            models.CheckConstraint(
                condition=Q(approvals_required__gte=1)
                & Q(approvals_required__lte=APPROVALS_REQUIRED_MAX),
                name="approvals_policy_approvals_required_range",
            ),
            models.CheckConstraint(
                condition=Q(four_eyes=False, approvals_required=1)
                | Q(approvers_group__isnull=False),
                name="approvals_policy_quorum_needs_approvers",
            ),
        ]

    def __str__(self) -> str:
        return f"#{self.pk} {self.action} {self.tool_pattern} for {self.subject_label}"

    @property
    def subject_label(self) -> str:
        if self.conversation_id is not None:
            return f"user {self.user} in conversation {self.conversation_id}"
        if self.user_id is not None:
            return f"user {self.user}"
        if self.group_id is not None:
            return f"group {self.group}"
        return "everyone"

    @property
    def condition_label(self) -> str:
        if not self.condition_path:
            return ""
        return f"{self.condition_path} {self.condition_operator} {self.condition_value!r}"

    def clean(self) -> None:
        errors: dict[str, list[str]] = {}
        if self.user_id is not None and self.group_id is not None:
            errors.setdefault("group", []).append("Choose a user or a group, not both.")
        if self.conversation_id is not None and self.user_id is None:
            errors.setdefault("user", []).append("A conversation-scoped rule needs a user.")
        if self.four_eyes and self.approvers_group_id is None:
            errors.setdefault("four_eyes", []).append(
                "Four eyes needs an approvers group: without one only the requester "
                "decides, and four eyes forbids exactly that."
            )
        if (self.approvals_required or 1) > 1 and self.approvers_group_id is None:
            errors.setdefault("approvals_required", []).append(
                "Several approvals need an approvers group: without one only the requester decides."
            )
        pattern = self.tool_pattern or ""
        if not pattern or not TOOL_PATTERN_RE.match(pattern):
            errors.setdefault("tool_pattern", []).append(
                "Use a tool name or a glob of letters, digits, . _ - : / and * ? [ ]."
            )
        else:
            try:
                re.compile(fnmatch.translate(pattern))
            except re.error as exc:
                errors.setdefault("tool_pattern", []).append(f"Invalid glob: {exc}.")
            if pattern.count("[") != pattern.count("]"):
                errors.setdefault("tool_pattern", []).append("Unbalanced [ ] in the glob.")
        if self.condition_path or self.condition_operator:
            if not self.condition_path:
                errors.setdefault("condition_path", []).append("A condition needs a field path.")
            if not self.condition_operator:
                errors.setdefault("condition_operator", []).append("A condition needs an operator.")
            if self.condition_operator == self.Operator.IN and not isinstance(
                self.condition_value, list
            ):
                errors.setdefault("condition_value", []).append("'in' needs a JSON list.")
            if self.condition_operator == self.Operator.MATCHES:
                if not isinstance(self.condition_value, str):
                    errors.setdefault("condition_value", []).append(
                        "'matches' needs a regular expression as a JSON string."
                    )
                else:
                    try:
                        re.compile(self.condition_value)
                    except re.error as exc:
                        errors.setdefault("condition_value", []).append(
                            f"Invalid regular expression: {exc}."
                        )
            if self.condition_path:
                try:
                    parse_path(self.condition_path)
                except ValueError as exc:
                    errors.setdefault("condition_path", []).append(str(exc))
        if errors:
            raise ValidationError(errors)


# --- Approval requests -----------------------------------------------------------


class ApprovalRequest(models.Model):
    """A tool call waiting for (or past) a human decision.

    Bound to the exact arguments shown (``arguments_hash``; after an edit,
    ``effective_arguments_hash``) and single-use: the status leaves ``pending``
    once, under a row lock, and a check constraint ties ``decided_at`` to that
    (null exactly while pending). ``arguments_schema`` is a copy of the tool's
    JSON Schema so edits are validated here without importing ``tools``.

    ``approver_group``, ``four_eyes`` and ``approvals_required`` are copied from
    the rule when the gate asks, so a later change of the rule leaves open
    requests as they were asked. Each person's approval or denial is an
    ``ApprovalVote``; the request is approved by ``approvals_required`` approvals
    from different people, denied by the first denial.

    ``cost_estimate`` (``approvals.costs.CostEstimate.as_json``) is what approving
    may cost, given by the app that asked; ``estimated_cost_usd`` its known total.
    """

    class Status(models.TextChoices):
        PENDING = "pending"
        APPROVED = "approved"
        DENIED = "denied"
        EXPIRED = "expired"
        CANCELLED = "cancelled"

    invocation = models.OneToOneField(
        "tools.ToolInvocation", on_delete=models.CASCADE, related_name="approval"
    )
    requester = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="approval_requests"
    )
    approver_group = models.ForeignKey(
        Group,
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="approval_requests",
        help_text="Members decide; blank: the requester decides.",
    )
    four_eyes = models.BooleanField(
        default=False, help_text="The requester may never decide this request."
    )
    approvals_required = models.PositiveSmallIntegerField(
        default=1, help_text="Approvals from different people that approve it."
    )
    conversation_id = models.BigIntegerField(null=True, blank=True, db_index=True)
    run_id = models.BigIntegerField(null=True, blank=True, db_index=True)
    tool_name = models.CharField(max_length=200, db_index=True)
    tool_description = models.TextField(blank=True)
    hints = models.JSONField(default=dict, blank=True)
    arguments = models.JSONField(default=dict, blank=True)
    arguments_schema = models.JSONField(default=dict, blank=True)
    arguments_hash = models.CharField(max_length=64)
    explanation = models.CharField(max_length=500, blank=True)
    policy = models.ForeignKey(
        ApprovalPolicy, on_delete=models.SET_NULL, null=True, blank=True, related_name="requests"
    )
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    expires_at = models.DateTimeField()
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="approval_decisions",
    )
    decided_at = models.DateTimeField(null=True, blank=True)
    reason = models.TextField(blank=True)
    edited_arguments = models.JSONField(null=True, blank=True)
    arguments_diff = models.JSONField(null=True, blank=True)
    estimated_cost_usd = models.DecimalField(
        "estimated cost (USD)",
        max_digits=24,
        decimal_places=12,
        null=True,
        blank=True,
        help_text="The parts of the cost estimate that have an amount; blank: none has.",
    )
    cost_estimate = models.JSONField(
        default=dict,
        blank=True,
        help_text=(
            "What approving may cost (approvals.costs.CostEstimate): the call's own cost and "
            "the run's next model step; empty: not estimated."
        ),
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ("-created_at", "-id")
        constraints: ClassVar = [
            models.CheckConstraint(
                condition=(Q(status="pending") & Q(decided_at__isnull=True))
                | (~Q(status="pending") & Q(decided_at__isnull=False)),
                name="approvals_request_decided_iff_not_pending",
            ),
            models.CheckConstraint(
                condition=Q(approvals_required__gte=1),
                name="approvals_request_approvals_required_positive",
            ),
            models.CheckConstraint(
                condition=Q(four_eyes=False, approvals_required=1)
                | Q(approver_group__isnull=False),
                name="approvals_request_quorum_needs_approvers",
            ),
        ]
        indexes: ClassVar = [
            models.Index(fields=["status", "expires_at"]),
            models.Index(fields=["requester", "-created_at"]),
        ]

    def __str__(self) -> str:
        return f"Approval {self.pk} {self.tool_name} ({self.status})"

    @property
    def is_pending(self) -> bool:
        return self.status == self.Status.PENDING

    @property
    def effective_arguments(self) -> Any:
        """The arguments to execute: the edited ones when a decider edited them."""
        return self.edited_arguments if self.edited_arguments is not None else self.arguments

    @property
    def effective_arguments_hash(self) -> str:
        """The hash a decision must quote: of the edited arguments once an approver
        edited them (a later approver approves exactly those), else ``arguments_hash``."""
        if self.edited_arguments is None:
            return self.arguments_hash
        return compute_arguments_hash(self.edited_arguments)

    @property
    def needs_several(self) -> bool:
        """Whether more than one person takes part: several approvals, or four eyes."""
        return self.four_eyes or self.approvals_required > 1

    @property
    def is_destructive(self) -> bool:
        return hints_destructive(self.hints or {})

    @property
    def hints_trusted(self) -> bool:
        """False for a tool of an MCP server not marked trusted (``hints["trusted"]``)."""
        return (self.hints or {}).get("trusted", True) is not False

    @property
    def always_allow_permitted(self) -> bool:
        """Whether "always allow" may be offered: never for a destructive tool, never
        for an untrusted server's tool (its hints cannot be believed; MCP spec), never
        where the rule wants more than one person (one click would waive that for
        every later call)."""
        return not self.is_destructive and self.hints_trusted and not self.needs_several

    @property
    def conversation_url(self) -> str:
        return f"/c/{self.conversation_id}/" if self.conversation_id else ""


class ApprovalVote(models.Model):
    """One person's approval or denial of one request: at most one per person.

    ``arguments_hash`` is the hash of the arguments voted on (the edited ones
    when this voter edited them); ``edited`` marks the vote that edited them.
    Written only by ``approvals.services.approval_decide``, under the request's
    row lock; kept when the request expires or is cancelled.
    """

    class Decision(models.TextChoices):
        APPROVE = "approve"
        DENY = "deny"

    approval = models.ForeignKey(ApprovalRequest, on_delete=models.CASCADE, related_name="votes")
    voter = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="approval_votes",
    )
    decision = models.CharField(max_length=8, choices=Decision.choices)
    reason = models.TextField(blank=True)
    arguments_hash = models.CharField(max_length=64)
    edited = models.BooleanField(default=False)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ("created_at", "id")
        constraints: ClassVar = [
            models.UniqueConstraint(
                fields=["approval", "voter"], name="approvals_vote_once_per_voter"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.decision} by {self.voter_id} on approval {self.approval_id}"


def hints_destructive(hints: dict[str, Any]) -> bool:
    """MCP semantics: ``destructive`` defaults to true unless the tool is read-only."""
    if "destructive" in hints:
        return bool(hints["destructive"])
    return not bool(hints.get("read_only"))


# --- Guardrails --------------------------------------------------------------------


class Guardrail(models.Model):
    """A check on text at one stage of a run: block, redact or warn.

    Subject: ``user``, or ``group``, or neither (everyone). ``config`` depends on
    the kind (``approvals.guardrails.KIND_CONFIG`` documents the keys); the checks
    themselves live in ``approvals.guardrails``. Guardrails of a stage run in
    ``order`` (then id); a block stops the rest.
    """

    class Stage(models.TextChoices):
        USER_INPUT = "user_input", "user input"
        MODEL_OUTPUT = "model_output", "model output"
        TOOL_ARGUMENTS = "tool_arguments", "tool arguments"
        TOOL_OUTPUT = "tool_output", "tool output"

    class Kind(models.TextChoices):
        LENGTH = "length", "length (characters)"
        REGEX = "regex", "pattern (regular expressions)"
        KEYWORDS = "keywords", "keyword list"
        PII = "pii", "personal data (PII)"
        INJECTION = "injection", "prompt injection (heuristics)"
        JSON_SCHEMA = "json_schema", "structured output (JSON Schema)"

    class Action(models.TextChoices):
        BLOCK = "block"
        REDACT = "redact"
        WARN = "warn"

    name = models.CharField(max_length=100)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="guardrails",
    )
    group = models.ForeignKey(
        Group, on_delete=models.CASCADE, null=True, blank=True, related_name="guardrails"
    )
    stage = models.CharField(max_length=16, choices=Stage.choices)
    kind = models.CharField(max_length=16, choices=Kind.choices)
    action = models.CharField(max_length=8, choices=Action.choices)
    config = models.JSONField(
        default=dict,
        blank=True,
        help_text=(
            'length: {"max_chars": 2000}; regex: {"patterns": ["..."]}; keywords: '
            '{"words": ["..."]}; pii: {"entities": ["EMAIL", "PHONE", "CREDIT_CARD", '
            '"IBAN", "IP_ADDRESS", "NATIONAL_ID"]} (blank: all); injection: {} or '
            '{"threshold": 1}; json_schema: {"schema": {...}}.'
        ),
    )
    order = models.PositiveIntegerField(default=100, help_text="Lower runs first.")
    description = models.TextField(
        blank=True, help_text="Shown to the user when this guardrail acts: why."
    )
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ("stage", "order", "id")
        constraints: ClassVar = [
            models.CheckConstraint(
                condition=Q(user__isnull=True) | Q(group__isnull=True),
                name="approvals_guardrail_user_or_group",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.get_stage_display()}, {self.kind}, {self.action})"

    @property
    def subject_label(self) -> str:
        if self.user_id is not None:
            return f"user {self.user}"
        if self.group_id is not None:
            return f"group {self.group}"
        return "everyone"

    def clean(self) -> None:
        errors: dict[str, list[str]] = {}
        if self.user_id is not None and self.group_id is not None:
            errors.setdefault("group", []).append("Choose a user or a group, not both.")
        if self.action == self.Action.REDACT and self.kind in UNREDACTABLE:
            errors.setdefault("action", []).append(
                f"A {self.get_kind_display()} guardrail cannot redact; block or warn."
            )
        try:
            guardrail_config_check(kind=self.kind, config=self.config)
        except GuardrailConfigError as exc:
            errors.setdefault("config", []).append(str(exc))
        if errors:
            raise ValidationError(errors)
