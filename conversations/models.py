"""Conversations, messages, runs and the admin-managed model configs.

A ``Run`` is one answer to one user message: the durable agent loop advances it
one step at a time, with all of its state in these rows (see DESIGN.md, "The
agent loop").
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone

from accounts.sharing import Visibility

if TYPE_CHECKING:
    from tools.models import ToolInvocation


class ModelConfig(models.Model):
    """A model users can pick, reached through litellm.

    ``litellm_model`` is litellm's model string (``openai/gpt-4o-mini``,
    ``anthropic/claude-3-5-sonnet-latest``, ``ollama/llama3``, ``demo/tollgate``).
    The API key is never stored: ``api_key_env`` names the environment variable
    that holds it. Prices are USD per token and override litellm's price map
    when set.
    """

    class Kind(models.TextChoices):
        CHAT = "chat", "Chat"
        EMBEDDING = "embedding", "Embedding"

    name = models.CharField("display name", max_length=100, unique=True)
    litellm_model = models.CharField(max_length=200, help_text="litellm model string")
    api_base = models.URLField(blank=True, help_text="Provider base URL; blank for the default.")
    api_key_env = models.CharField(
        "API key variable",
        max_length=100,
        blank=True,
        help_text="Name of the environment variable holding the API key (never the key).",
    )
    context_window = models.PositiveIntegerField(default=8192, help_text="tokens")
    max_output_tokens = models.PositiveIntegerField(default=1024, help_text="tokens")
    input_cost_per_token = models.DecimalField(
        max_digits=16, decimal_places=12, null=True, blank=True, help_text="USD per prompt token"
    )
    output_cost_per_token = models.DecimalField(
        max_digits=16, decimal_places=12, null=True, blank=True, help_text="USD per output token"
    )
    cached_input_cost_per_token = models.DecimalField(
        max_digits=16,
        decimal_places=12,
        null=True,
        blank=True,
        help_text="USD per prompt token read from the provider's prompt cache; blank = the "
        "prompt price. Used with the prices above.",
    )
    temperature = models.FloatField(
        null=True,
        blank=True,
        help_text="Sampling temperature sent with every call; blank = the provider's default.",
    )
    cache_replies = models.BooleanField(
        default=False,
        help_text="Answer a repeated question from the cache (free, no provider call): "
        "only calls at temperature 0 that offer no tools.",
    )
    fallbacks = models.JSONField(
        default=list,
        blank=True,
        help_text="Ids of other model configs to try, in order, when this one fails "
        "before its first token (set in admin by name).",
    )
    supports_tools = models.BooleanField(default=True)
    accepts_images = models.BooleanField(
        "accepts images",
        default=False,
        help_text="The model reads image parts (vision); an image sent to a model without "
        "this is refused before the call.",
    )
    kind = models.CharField(
        max_length=20,
        choices=Kind.choices,
        default=Kind.CHAT,
        help_text="Chat models answer messages; an embedding model turns text into "
        "vectors for knowledge search and is never offered in the chat.",
    )
    enabled = models.BooleanField(default=True)
    is_default = models.BooleanField("default", default=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ("name",)
        constraints: ClassVar = [
            models.UniqueConstraint(
                fields=["is_default"],
                condition=Q(is_default=True),
                name="conversations_one_default_model",
            ),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def prices_confirmed(self) -> bool:
        """An admin set this model's prices (either one; ``0`` is a price): they are
        used instead of litellm's price map, and the model may be used under a
        dollar budget whatever that map says."""
        return self.input_cost_per_token is not None or self.output_cost_per_token is not None


class AgentProfile(models.Model):
    """An agent: instructions, a model and its parameters, the tools it may use, and
    the agents it may hand off to (``conversations.agents``).

    ``owner`` ``None``: the deployment's (made in admin). Visibility works as a
    prompt's: private, shared with groups, or everyone. The instructions are a
    library prompt at a label (``prompt`` + ``prompt_label``) or ``instructions``
    text; temperature and max output tokens, when set, win over the prompt's and the
    model's (``prompting.call_settings``). ``tools``: names of the tools it may use,
    of those its user may use (empty: none). ``transfer``: what history this agent
    reads when a run is handed off to it. ``agent_tools``: agents it may call as tools
    (``conversations.subagents``); ``max_steps``: the model calls it may make in a run.
    """

    Visibility = Visibility  # who else sees it: ``accounts.sharing``

    class Transfer(models.TextChoices):
        FULL = "full", "Full history"
        NO_TOOLS = "no_tools", "History without the previous agent's tool traffic"
        SUMMARY = "summary", "The previous agent's summary and the last user message"

    name = models.CharField(max_length=80)
    description = models.CharField(max_length=300, blank=True)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="agents",
        help_text="Empty: the deployment's own agent.",
    )
    visibility = models.CharField(
        max_length=16, choices=Visibility.choices, default=Visibility.PRIVATE
    )
    groups = models.ManyToManyField(
        "auth.Group", blank=True, related_name="agents", help_text="Shared with these groups."
    )
    instructions = models.TextField(blank=True, help_text="Used when no library prompt is set.")
    prompt = models.ForeignKey(
        "prompts.Prompt", on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    prompt_label = models.CharField(
        max_length=40, blank=True, help_text="The prompt's label followed (empty: production)."
    )
    model_config = models.ForeignKey(
        ModelConfig,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        help_text="Empty: the conversation's model.",
    )
    temperature = models.DecimalField(max_digits=3, decimal_places=2, null=True, blank=True)
    max_output_tokens = models.PositiveIntegerField(null=True, blank=True)
    tools = models.JSONField(
        default=list, blank=True, help_text="Names of the tools this agent may use."
    )
    handoff_targets = models.ManyToManyField(
        "self", symmetrical=False, blank=True, related_name="+", help_text="May hand off to."
    )
    max_handoffs = models.PositiveSmallIntegerField(
        default=3, help_text="Handoffs a run started with this agent may make at most."
    )
    agent_tools = models.ManyToManyField(
        "self",
        symmetrical=False,
        blank=True,
        related_name="+",
        help_text="May call as tools: each answers a task in a sub-run of its own.",
    )
    max_steps = models.PositiveSmallIntegerField(
        null=True,
        blank=True,
        help_text="Model calls this agent may make in a run (empty: the run's default).",
    )
    transfer = models.CharField(max_length=16, choices=Transfer.choices, default=Transfer.FULL)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ("name", "id")

    def __str__(self) -> str:
        return self.name


class Conversation(models.Model):
    """A chat thread owned by one user."""

    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="conversations"
    )
    title = models.CharField(max_length=200, blank=True)
    model_config = models.ForeignKey(
        ModelConfig, on_delete=models.PROTECT, related_name="conversations"
    )
    # The conversation's settings (``conversations.prompting``): its system prompt
    # is a library prompt (followed at a label, or a pinned version), else its own
    # text, else TOLLGATE_SYSTEM_PROMPT; temperature and max output tokens, when
    # set, win over the prompt version's and the model's.
    system_prompt = models.ForeignKey(
        "prompts.Prompt", on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    system_prompt_label = models.CharField(
        max_length=40, blank=True, help_text="The label followed; empty with a pinned version."
    )
    system_prompt_version = models.ForeignKey(
        "prompts.PromptVersion",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        help_text="A pinned version (else the label's).",
    )
    system_prompt_text = models.TextField(
        blank=True, help_text="The conversation's own system prompt, when no library prompt."
    )
    prompt_variables = models.JSONField(
        default=dict, blank=True, help_text="Values of the system prompt's variables."
    )
    temperature = models.DecimalField(max_digits=3, decimal_places=2, null=True, blank=True)
    max_output_tokens = models.PositiveIntegerField(null=True, blank=True)
    # Compare mode's summary in this conversation (``conversations.compare``); empty:
    # the deployment's (``TOLLGATE_COMPARE_SUMMARY_MODEL``, ``_PROMPT``, ``_SHOWN``).
    compare_summary_model = models.ForeignKey(
        ModelConfig, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    compare_summary_prompt = models.ForeignKey(
        "prompts.Prompt", on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    compare_summary_shown = models.BooleanField(null=True, blank=True)
    agent = models.ForeignKey(
        AgentProfile,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        help_text="The agent that answers (its instructions, model and tools); empty: "
        "the conversation's own settings.",
    )
    archived = models.BooleanField(default=False)
    pinned = models.BooleanField(default=False, help_text="Listed first in its owner's sidebar.")
    current_run = models.ForeignKey(
        "Run",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        help_text="The last run of the branch shown, and continued by the next message.",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ("-updated_at", "-id")
        indexes: ClassVar = [models.Index(fields=["owner", "archived", "-updated_at"])]

    def __str__(self) -> str:
        return self.title or f"Conversation {self.pk}"


class Message(models.Model):
    """One message in a conversation, in the order the model sees them.

    Assistant messages carry the model's ``tool_calls`` (OpenAI format) and
    their usage; tool messages carry the ``tool_call_id`` they answer.
    """

    class Role(models.TextChoices):
        SYSTEM = "system"
        USER = "user"
        ASSISTANT = "assistant"
        TOOL = "tool"

    class Status(models.TextChoices):
        COMPLETE = "complete"
        STREAMING = "streaming"
        STOPPED = "stopped"
        FAILED = "failed"

    conversation = models.ForeignKey(
        Conversation, on_delete=models.CASCADE, related_name="messages"
    )
    run = models.ForeignKey(
        "Run", on_delete=models.SET_NULL, null=True, blank=True, related_name="messages"
    )
    role = models.CharField(max_length=16, choices=Role.choices)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.COMPLETE)
    content = models.TextField(blank=True)
    tool_calls = models.JSONField(null=True, blank=True)
    tool_call_id = models.CharField(max_length=200, blank=True)
    model = models.CharField(max_length=200, blank=True)
    prompt_tokens = models.PositiveIntegerField(null=True, blank=True)
    completion_tokens = models.PositiveIntegerField(null=True, blank=True)
    cost_usd = models.DecimalField(max_digits=14, decimal_places=8, null=True, blank=True)
    latency_ms = models.PositiveIntegerField(null=True, blank=True)
    run_step = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="For assistant messages: the run step (LLM call) it answers.",
    )
    metadata = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    #: Files sent with a user message: Knowledge documents of its sender
    #: (``conversations.attachments``); ``metadata["attachments"]`` keeps what the
    #: page shows of them (name, type), so drawing a message costs no query.
    attachments = models.ManyToManyField(
        "knowledge.Document", through="MessageAttachment", related_name="+", blank=True
    )

    # Not fields: set on messages loaded for display and read by the templates:
    # ``steps``, the tool calls this assistant message made (``selectors.run_steps_attach``);
    # for a user message, ``switch``, its place among the versions sent at its place,
    # and ``editable`` (``selectors.conversation_timeline``).
    steps: list[ToolInvocation]
    switch: Any  # conversations.branches.Switch (which imports this module)
    editable: bool

    class Meta:
        ordering = ("conversation", "id")
        indexes: ClassVar = [models.Index(fields=["conversation", "id"])]
        constraints: ClassVar = [
            # One assistant message per run step: a replayed step reuses it.
            models.UniqueConstraint(
                fields=["run", "run_step"],
                condition=Q(role="assistant"),
                name="conversations_one_assistant_message_per_step",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.role}: {self.content[:40]}"


class MessageAttachment(models.Model):
    """A file sent with a user message, in the order it was attached. Deleting the
    document (on the Knowledge page) deletes the link; deleting the message keeps
    the document."""

    message = models.ForeignKey(Message, on_delete=models.CASCADE, related_name="attached")
    document = models.ForeignKey(
        "knowledge.Document", on_delete=models.CASCADE, related_name="message_links"
    )
    position = models.PositiveSmallIntegerField(default=0)

    class Meta:
        ordering = ("message", "position", "id")
        constraints: ClassVar = [
            models.UniqueConstraint(
                fields=["message", "document"], name="conversations_attachment_once"
            )
        ]

    def __str__(self) -> str:
        return f"{self.message_id} ← {self.document_id}"


class Run(models.Model):
    """One answer to one user message: the unit the agent loop advances.

    ``step`` counts LLM calls made; ``max_steps`` bounds it. ``lease_owner``
    and ``lease_expires_at`` mark the worker currently advancing the run; an
    expired lease lets the recovery job pick the run up again.
    """

    #: Model calls a run may make when its agent sets no limit.
    DEFAULT_MAX_STEPS = 8

    class Status(models.TextChoices):
        QUEUED = "queued"
        CALLING_LLM = "calling_llm"
        GATING = "gating"
        AWAITING_APPROVAL = "awaiting_approval"
        EXECUTING_TOOLS = "executing_tools"
        AWAITING_PARTS = "awaiting_parts"
        COMPLETED = "completed"
        FAILED = "failed"
        CANCELLED = "cancelled"

    TERMINAL: ClassVar[frozenset[str]] = frozenset(
        {Status.COMPLETED, Status.FAILED, Status.CANCELLED}
    )

    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="runs")
    user_message = models.ForeignKey(
        Message, on_delete=models.CASCADE, related_name="answering_runs"
    )
    parent = models.ForeignKey(
        "self",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="children",
        help_text=(
            "The run whose answer this exchange follows (none: the conversation's first). "
            "Runs of one user message with one parent are regenerated answers; user "
            "messages after one parent are edits (conversations.branches)."
        ),
    )

    class Kind(models.TextChoices):
        ANSWER = "answer", "Answer"
        COMPARE = "compare", "Compare: parallel answers and a summary"
        CHAIN = "chain", "Chain of steps"

    status = models.CharField(max_length=24, choices=Status.choices, default=Status.QUEUED)
    kind = models.CharField(
        max_length=16,
        choices=Kind.choices,
        default=Kind.ANSWER,
        help_text=(
            "answer: one model answers (with its tool turns). compare and chain are "
            "orchestrating runs: they wait in awaiting_parts for their parts (runs whose "
            "orchestrator they are) and are told when each part ends (runs.run_part_ended)."
        ),
    )
    orchestrator = models.ForeignKey(
        "self",
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="parts",
        help_text="The compare or chain run this run is a part of (none: a run of its own).",
    )
    position = models.PositiveSmallIntegerField(
        default=0, help_text="A part's place among its orchestrator's parts (0, 1, …)."
    )
    step = models.PositiveIntegerField(default=0)
    max_steps = models.PositiveIntegerField(default=DEFAULT_MAX_STEPS)
    error = models.TextField(blank=True)
    # What the run's model calls use, recorded when it starts (``prompting.run_settings``):
    # the model, the prompt version, and in ``parameters`` the system prompt's text
    # and where it came from, temperature and max output tokens.
    model_config = models.ForeignKey(
        ModelConfig, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    prompt_version = models.ForeignKey(
        "prompts.PromptVersion", on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    parameters = models.JSONField(default=dict, blank=True)
    cancel_requested = models.BooleanField(default=False)
    lease_owner = models.CharField(max_length=200, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    metadata = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    # Not fields: set on instances loaded for display (``selectors.conversation_timeline``,
    # ``selectors.run_for_push``, ``events.run_appended``), read by the templates.
    timeline_messages: list[Message]
    timeline_invocations: list[ToolInvocation]
    orphan_steps: list[ToolInvocation]
    switch: Any  # branches.Switch: its place among the answers regenerated for its message
    # A compare run's parts, in order, and the run its exchange goes on from (one of
    # them, or itself: the summary; ``None``: its exchange is not on the branch shown).
    compare_parts: list[Run]
    compare_chosen: int | None
    # A chain's parts, in order, and for each part what it was charged and, for a
    # judge, its verdict (``selectors.chain_parts_attach``).
    chain_parts: list[Run]
    chain_usage: dict[str, Any]
    chain_verdict: dict[str, Any] | None

    class Meta:
        ordering = ("-id",)
        indexes: ClassVar = [
            models.Index(fields=["status", "lease_expires_at"]),
            models.Index(fields=["conversation", "-id"]),
        ]

    def __str__(self) -> str:
        return f"Run {self.pk} ({self.status})"

    @property
    def is_terminal(self) -> bool:
        return self.status in self.TERMINAL

    @property
    def retry_blocked(self) -> bool:
        """Whether a Retry would only be refused again: a budget or rate limit refused
        this run and has not reset yet (``retry_not_before`` in ``metadata``), or a
        budget that never resets did (``retry_never``)."""
        if self.metadata.get("retry_never"):
            return True
        until = self.retry_not_before
        return until is not None and until > timezone.now()

    @property
    def retry_not_before(self) -> datetime | None:
        """When a Retry of this run refused by a budget or rate limit may succeed."""
        value = self.metadata.get("retry_not_before")
        try:
            return datetime.fromisoformat(value) if isinstance(value, str) else None
        except ValueError:
            return None

    @property
    def is_resuming(self) -> bool:
        """Whether the run is being picked up after its worker stopped: its lease ran
        out (the recovery job is handing it on), or another worker resumed the step
        now in progress (``metadata["resumed_step"]``, set by ``runs.run_claim``)."""
        if self.is_terminal:
            return False
        lapsed = bool(self.lease_owner) and (
            self.lease_expires_at is not None and self.lease_expires_at <= timezone.now()
        )
        return lapsed or self.metadata.get("resumed_step") == self.step


class UserPreferences(models.Model):
    """One user's defaults for the chat and the look of every page (their settings page).

    ``default_model`` and ``default_system_prompt`` start each new conversation (a
    disabled model falls back to the site's default); ``theme`` is light, dark or
    the system's; ``send_key``: Enter sends (Shift+Enter for a new line), or
    Ctrl+Enter sends (Enter for a new line). No row: every default.
    """

    class Theme(models.TextChoices):
        SYSTEM = "system", "Follow the system"
        LIGHT = "light", "Light"
        DARK = "dark", "Dark"

    class SendKey(models.TextChoices):
        ENTER = "enter", "Enter sends, Shift+Enter adds a line"
        CTRL_ENTER = "ctrl_enter", "Ctrl+Enter sends, Enter adds a line"

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="chat_preferences"
    )
    default_model = models.ForeignKey(
        ModelConfig, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    default_system_prompt = models.TextField(blank=True)
    theme = models.CharField(max_length=10, choices=Theme.choices, default=Theme.SYSTEM)
    send_key = models.CharField(max_length=12, choices=SendKey.choices, default=SendKey.ENTER)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name_plural = "user preferences"

    def __str__(self) -> str:
        return f"Preferences of {self.user_id}"
