"""Tools known to the registry and every invocation of one.

``ToolInvocation`` is keyed by (run, provider ``tool_call_id``): a replayed
agent-loop step finds the row it already wrote and does nothing twice.
Its run and message are plain id columns, not foreign keys: they belong to
``conversations``, an app above this one, which this app neither imports nor
points at (docs/architecture.md: conversations → approvals → tools → accounts
→ audit → project).
"""

from __future__ import annotations

import shutil
from typing import ClassVar

from django.contrib.auth.models import Group
from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator, RegexValidator
from django.db import models

from tools.mcp.config import MCPServerConfig
from tools.mcp.errors import MCPConfigError


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

    # Ids, not foreign keys: runs and messages belong to ``conversations``, above
    # this app (docs/architecture.md). Deleting a run deletes its invocations
    # through ``tools.services.invocations_delete``, called by conversations.
    run_id = models.BigIntegerField(db_index=True, help_text="The run that made the call.")
    message_id = models.BigIntegerField(
        null=True,
        blank=True,
        db_index=True,
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
        ordering = ("run_id", "position", "id")
        constraints: ClassVar = [
            models.UniqueConstraint(
                fields=["run_id", "tool_call_id"], name="tools_invocation_run_call_unique"
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


class MCPServer(models.Model):
    """An MCP (Model Context Protocol) server whose tools join the registry.

    Its tools are registered as ``<tool_prefix>.<remote name>`` in every process
    from ``tools_cached`` (``tools.mcp.bridge``); ``Tool`` rows with
    ``source = "mcp:<name>"`` carry the admin's enabled/groups choices.

    Secrets are never stored: ``env`` and ``headers`` map a name to the *name of
    an environment variable* of the connecting process that holds the value
    (``{"Authorization": "GITHUB_MCP_AUTH"}``). Status fields are written by the
    bridge (health checks, calls, the connection supervisor) with queryset
    ``update()``, so they do not change ``updated_at``; ``updated_at`` changes
    only with the configuration or the cached tool list, and that is what makes
    other processes re-register the tools.
    """

    class Transport(models.TextChoices):
        STDIO = "stdio", "stdio (spawn a command)"
        HTTP = "http", "Streamable HTTP"

    name = models.CharField(
        max_length=64,
        unique=True,
        validators=[
            RegexValidator(
                r"^[A-Za-z0-9_-]{1,64}$", "Use letters, digits, '_' and '-' (no spaces)."
            )
        ],
    )
    transport = models.CharField(max_length=8, choices=Transport.choices, default=Transport.STDIO)
    command = models.CharField(
        max_length=500, blank=True, help_text="stdio: the executable (on this host's PATH)."
    )
    args = models.JSONField(
        default=list, blank=True, help_text='stdio: JSON list of arguments, e.g. ["stdio"].'
    )
    env = models.JSONField(
        default=dict,
        blank=True,
        help_text=(
            "stdio: JSON object {VARIABLE_IN_SERVER: NAME_OF_OUR_ENV_VAR}. Values are read "
            "from this process's environment at connect time and never stored."
        ),
    )
    url = models.CharField(max_length=500, blank=True, help_text="http: the endpoint URL.")
    headers = models.JSONField(
        default=dict,
        blank=True,
        help_text=(
            "http: JSON object {Header-Name: NAME_OF_OUR_ENV_VAR}; values come from the "
            "environment and are never stored."
        ),
    )
    enabled = models.BooleanField(default=True)
    trusted = models.BooleanField(
        default=False,
        help_text=(
            "Believe the server's tool annotations (read-only, destructive, ...). The MCP "
            "spec says annotations from untrusted servers must not be relied on: an "
            "untrusted server's tools always ask unless a policy says otherwise."
        ),
    )
    tool_prefix = models.CharField(
        max_length=32,
        unique=True,
        validators=[
            RegexValidator(r"^[A-Za-z0-9_-]{1,32}$", "1-32 letters, digits, '_' or '-' (no dots).")
        ],
        help_text="Tools appear as <prefix>.<tool>.",
    )
    connect_timeout_seconds = models.FloatField(default=30.0, validators=[MinValueValidator(0.1)])
    call_timeout_seconds = models.FloatField(default=120.0, validators=[MinValueValidator(0.1)])
    healthy = models.BooleanField(default=False, editable=False)
    last_error = models.TextField(blank=True, editable=False)
    last_checked_at = models.DateTimeField(null=True, blank=True, editable=False)
    failures = models.PositiveIntegerField(
        default=0, editable=False, help_text="Failed checks in a row (retry backoff)."
    )
    tools_cached = models.JSONField(
        default=list,
        blank=True,
        editable=False,
        help_text="The server's tool list (schemas and annotations) at the last refresh.",
    )
    tools_refreshed_at = models.DateTimeField(null=True, blank=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ("name",)
        verbose_name = "MCP server"

    def __str__(self) -> str:
        return self.name

    @property
    def source(self) -> str:
        """The ``Tool.source`` / ``ToolSpec.source`` of this server's tools."""
        return f"mcp:{self.name}"

    def to_config(self) -> MCPServerConfig:
        """This server as the client layer's ``MCPServerConfig``.

        Raises ``tools.mcp.MCPConfigError`` when the fields are inconsistent.
        """
        return MCPServerConfig(
            name=self.name,
            transport=self.transport,  # type: ignore[arg-type]
            command=self.command,
            args=tuple(str(a) for a in (self.args or [])),
            env=dict(self.env or {}),
            url=self.url,
            headers=dict(self.headers or {}),
            tool_prefix=self.tool_prefix,
            trusted=self.trusted,
            connect_timeout_seconds=self.connect_timeout_seconds,
            call_timeout_seconds=self.call_timeout_seconds,
        )

    def clean(self) -> None:
        errors: dict[str, str] = {}
        if not isinstance(self.args, list) or not all(isinstance(a, str) for a in self.args):
            errors["args"] = "Arguments must be a JSON list of strings."
        for field in ("env", "headers"):
            value = getattr(self, field)
            if not isinstance(value, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in value.items()
            ):
                errors[field] = "Must be a JSON object of names to environment variable names."
        if self.transport == self.Transport.STDIO:
            if not self.command.strip():
                errors["command"] = "A stdio server needs a command."
            elif any(c in self.command for c in "\n\r\0"):
                errors["command"] = "The command must be one line."
            elif shutil.which(self.command) is None:
                errors["command"] = (
                    f"Command {self.command!r} was not found on this host's PATH "
                    "(or is not executable)."
                )
        elif not self.url.startswith(("http://", "https://")):
            errors["url"] = "An http server needs an http:// or https:// URL."
        if errors:
            raise ValidationError(errors)
        try:
            self.to_config()
        except MCPConfigError as exc:
            raise ValidationError(str(exc)) from exc
