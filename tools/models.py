"""Tools known to the registry and every invocation of one.

``ToolInvocation`` is keyed by (run, provider ``tool_call_id``): a replayed
agent-loop step finds the row it already wrote and does nothing twice.
The foreign keys into ``conversations`` are by name only; this app never
imports ``conversations`` (DESIGN.md: conversations → tools → approvals).
"""

from __future__ import annotations

from typing import ClassVar

from django.contrib.auth.models import Group
from django.db import models


class Tool(models.Model):
    """Admin switch for a registered tool: enabled, and for which groups.

    Rows are created from the registry (``tools_sync``); no group means every
    user may use the tool when it is enabled.
    """

    name = models.CharField(max_length=200, unique=True)
    description = models.TextField(blank=True)
    enabled = models.BooleanField(default=True)
    groups = models.ManyToManyField(
        Group,
        blank=True,
        related_name="tools",
        help_text="Only members of these groups may use the tool; none selected means everyone.",
    )
    read_only = models.BooleanField(default=False)
    destructive = models.BooleanField(default=True)
    idempotent = models.BooleanField(default=False)
    open_world = models.BooleanField(default=True)
    source = models.CharField(
        max_length=100, default="builtin", help_text="builtin or mcp:<server>"
    )
    unavailable_reason = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ("name",)

    def __str__(self) -> str:
        return self.name


class ToolInvocation(models.Model):
    """One tool call the model asked for, from request through gate to result."""

    class Status(models.TextChoices):
        REQUESTED = "requested"  # stored, not yet gated
        INVALID = "invalid"  # arguments failed schema validation
        AWAITING_APPROVAL = "awaiting_approval"
        APPROVED = "approved"  # allowed by policy or a human; not started
        RUNNING = "running"
        SUCCEEDED = "succeeded"
        FAILED = "failed"  # the tool raised, timed out, or is unavailable
        DENIED = "denied"
        EXPIRED = "expired"
        CANCELLED = "cancelled"

    SETTLED: ClassVar[frozenset[str]] = frozenset(
        {
            Status.INVALID,
            Status.SUCCEEDED,
            Status.FAILED,
            Status.DENIED,
            Status.EXPIRED,
            Status.CANCELLED,
        }
    )

    class Decision(models.TextChoices):
        ALLOW = "allow"
        ASK = "ask"
        DENY = "deny"

    run = models.ForeignKey(
        "conversations.Run", on_delete=models.CASCADE, related_name="tool_invocations"
    )
    message = models.ForeignKey(
        "conversations.Message",
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="tool_invocations",
        help_text="The assistant message that made the call.",
    )
    user = models.ForeignKey(
        "accounts.User", on_delete=models.CASCADE, related_name="tool_invocations"
    )
    conversation_id = models.BigIntegerField(db_index=True)
    tool_call_id = models.CharField(max_length=200)
    tool_name = models.CharField(max_length=200)
    position = models.PositiveIntegerField(default=0, help_text="Order within the assistant turn.")
    arguments_raw = models.TextField(blank=True, help_text="Arguments as the model sent them.")
    arguments_requested = models.JSONField(null=True, blank=True)
    arguments_executed = models.JSONField(null=True, blank=True)
    status = models.CharField(max_length=24, choices=Status.choices, default=Status.REQUESTED)
    decision = models.CharField(max_length=8, choices=Decision.choices, blank=True)
    decision_explanation = models.CharField(max_length=500, blank=True)
    result = models.TextField(blank=True)
    is_error = models.BooleanField(default=False)
    error = models.TextField(blank=True)
    metadata = models.JSONField(default=dict, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    duration_ms = models.PositiveIntegerField(null=True, blank=True)

    class Meta:
        ordering = ("run", "position", "id")
        constraints: ClassVar = [
            models.UniqueConstraint(
                fields=["run", "tool_call_id"], name="tools_invocation_run_call_unique"
            ),
        ]
        indexes: ClassVar = [models.Index(fields=["status", "created_at"])]

    def __str__(self) -> str:
        return f"{self.tool_name} ({self.status})"

    @property
    def is_settled(self) -> bool:
        return self.status in self.SETTLED


class Note(models.Model):
    """One entry of a user's key-value notes store (the ``notes.*`` built-in tools)."""

    user = models.ForeignKey("accounts.User", on_delete=models.CASCADE, related_name="notes")
    key = models.CharField(max_length=200)
    value = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ("user", "key")
        constraints: ClassVar = [
            models.UniqueConstraint(fields=["user", "key"], name="tools_note_user_key_unique"),
        ]

    def __str__(self) -> str:
        return self.key


class HttpAllowedHost(models.Model):
    """An admin-added entry of the ``http.get`` allowlist.

    Added to the ``TOLLGATE_HTTP_ALLOWLIST`` setting. ``host`` is a host name
    (``example.com``), a wildcard for subdomains (``*.example.com``), an IP
    address, or a network in CIDR form (``10.0.0.0/8``); private and loopback
    addresses are only reachable when an IP or network entry names them.
    """

    host = models.CharField(max_length=255, unique=True)
    note = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ("host",)
        verbose_name = "HTTP allowed host"

    def __str__(self) -> str:
        return self.host
