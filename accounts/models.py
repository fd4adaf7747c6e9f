"""The custom user (email is the login), budgets, the usage ledger and rate limits."""

from __future__ import annotations

from decimal import Decimal
from typing import Any, ClassVar

from django.contrib.auth.models import AbstractUser
from django.contrib.auth.models import UserManager as DjangoUserManager
from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import Q
from django.db.models.functions import Lower
from django.utils import timezone


class UserManager(DjangoUserManager["User"]):
    """Creates users keyed by email (Django's manager assumes a username)."""

    use_in_migrations = True

    def _create_user_object(self, email: str, password: str | None, **extra: Any) -> User:
        if not email:
            raise ValueError("An email address is required.")
        user = self.model(email=self.normalize_email(email).lower(), **extra)
        user.password = ""
        user.set_password(password)
        return user

    def create_user(  # type: ignore[override]
        self, email: str, password: str | None = None, **extra: Any
    ) -> User:
        """Create and save a regular user. Raises ``ValueError`` without an email."""
        extra.setdefault("is_staff", False)
        extra.setdefault("is_superuser", False)
        user = self._create_user_object(email, password, **extra)
        user.save(using=self._db)
        return user

    def create_superuser(  # type: ignore[override]
        self, email: str, password: str | None = None, **extra: Any
    ) -> User:
        """Create and save a staff superuser. Raises ``ValueError`` without an email."""
        extra.setdefault("is_staff", True)
        extra.setdefault("is_superuser", True)
        if extra["is_staff"] is not True or extra["is_superuser"] is not True:
            raise ValueError("A superuser must have is_staff=True and is_superuser=True.")
        return self.create_user(email, password, **extra)


class User(AbstractUser):
    """A person who signs in with an email address and a password."""

    username = None  # type: ignore[assignment]
    first_name = None  # type: ignore[assignment]
    last_name = None  # type: ignore[assignment]
    name = models.CharField("display name", max_length=150, blank=True)
    email = models.EmailField("email address", unique=True)

    USERNAME_FIELD = "email"
    REQUIRED_FIELDS: ClassVar[list[str]] = []

    objects: ClassVar[UserManager] = UserManager()

    class Meta:
        ordering = ("email",)
        constraints: ClassVar = [
            models.UniqueConstraint(Lower("email"), name="accounts_user_email_ci_unique"),
        ]

    def __str__(self) -> str:
        return self.email

    def get_full_name(self) -> str:
        return self.name or self.email

    def get_short_name(self) -> str:
        return self.name or self.email.split("@", 1)[0]


# --- Budgets, the usage ledger, rate limits ------------------------------------
#
# Periods are computed in UTC (see ``accounts.periods``): a day starts at 00:00
# UTC, a week on Monday 00:00 UTC (ISO week), a month on the 1st at 00:00 UTC.


class Budget(models.Model):
    """A spending limit for one user, one group, or everyone (both empty).

    A user is bound by every enabled budget that applies to them: their own,
    each of their groups', and the defaults. Scope of the count:

    - a user budget counts that user's spend;
    - a group budget counts the spend of all its members together (one pool);
    - a default budget (no user, no group) counts each user's spend separately.

    ``cost_limit_usd`` is in USD, ``token_limit`` in tokens (prompt plus
    completion); at least one is set. ``warn_at_fraction`` (0 < f <= 1) is the
    share of a limit at which the user is warned once per period.
    """

    class Period(models.TextChoices):
        DAILY = "daily", "daily"
        WEEKLY = "weekly", "weekly"
        MONTHLY = "monthly", "monthly"
        TOTAL = "total", "total (never resets)"

    user = models.ForeignKey(
        "accounts.User",
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="budgets",
        help_text="Leave user and group empty for a default that applies to everyone.",
    )
    group = models.ForeignKey(
        "auth.Group", on_delete=models.CASCADE, null=True, blank=True, related_name="budgets"
    )
    period = models.CharField(max_length=16, choices=Period.choices, default=Period.MONTHLY)
    cost_limit_usd = models.DecimalField(
        "cost limit (USD)",
        max_digits=14,
        decimal_places=4,
        null=True,
        blank=True,
        help_text="USD per period; empty for no cost limit.",
    )
    token_limit = models.BigIntegerField(
        null=True, blank=True, help_text="Tokens (prompt + completion) per period; empty for none."
    )
    warn_at_fraction = models.DecimalField(
        "warn at",
        max_digits=4,
        decimal_places=3,
        default=Decimal("0.800"),
        help_text="Warn the user once per period at this share of a limit (0.8 = 80%).",
    )
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    # Not a field: the group's name (or None), set on the budgets read with
    # their group joined (``budgets_applicable``). Absent on
    # others, so read it with ``getattr(budget, "group_name", None)``.
    group_name: str | None

    class Meta:
        ordering = ("id",)
        constraints: ClassVar = [
            models.CheckConstraint(
                condition=~(Q(user__isnull=False) & Q(group__isnull=False)),
                name="accounts_budget_user_xor_group",
                violation_error_message="A budget belongs to a user or to a group, not both.",
            ),
            models.CheckConstraint(
                condition=Q(cost_limit_usd__isnull=False) | Q(token_limit__isnull=False),
                name="accounts_budget_has_limit",
                violation_error_message="Set a cost limit, a token limit, or both.",
            ),
            models.CheckConstraint(
                condition=Q(cost_limit_usd__isnull=True) | Q(cost_limit_usd__gte=0),
                name="accounts_budget_cost_not_negative",
                violation_error_message="The cost limit cannot be negative.",
            ),
            models.CheckConstraint(
                condition=Q(token_limit__isnull=True) | Q(token_limit__gte=0),
                name="accounts_budget_tokens_not_negative",
                violation_error_message="The token limit cannot be negative.",
            ),
            models.CheckConstraint(
                condition=Q(warn_at_fraction__gt=0) & Q(warn_at_fraction__lte=1),
                name="accounts_budget_warn_fraction_range",
                violation_error_message="The warning threshold must be above 0 and at most 1.",
            ),
            models.CheckConstraint(
                condition=Q(period__in=["daily", "weekly", "monthly", "total"]),
                name="accounts_budget_period_valid",
                violation_error_message="Unknown budget period.",
            ),
        ]

    def __str__(self) -> str:
        limits = []
        if self.cost_limit_usd is not None:
            limits.append(f"${self.cost_limit_usd:.2f}")
        if self.token_limit is not None:
            limits.append(f"{self.token_limit:,} tokens")
        return f"{self.period} {' / '.join(limits) or 'budget'} for {self.scope_label}"

    @property
    def scope_label(self) -> str:
        if self.user_id:
            return f"user {self.user}"
        if self.group_id:
            return f"group {self.group}"
        return "everyone"

    @property
    def is_default(self) -> bool:
        return self.user_id is None and self.group_id is None

    def clean(self) -> None:
        errors: dict[str, list[str]] = {}
        if self.user_id is not None and self.group_id is not None:
            errors.setdefault("group", []).append(
                "A budget belongs to a user or to a group, not both; clear one of them."
            )
        if self.cost_limit_usd is None and self.token_limit is None:
            errors.setdefault("cost_limit_usd", []).append(
                "Set a cost limit, a token limit, or both."
            )
        if self.cost_limit_usd is not None and self.cost_limit_usd < 0:
            errors.setdefault("cost_limit_usd", []).append(
                "The cost limit cannot be negative (use 0 to block all paid use)."
            )
        if self.token_limit is not None and self.token_limit < 0:
            errors.setdefault("token_limit", []).append("The token limit cannot be negative.")
        if self.warn_at_fraction is not None and not (0 < self.warn_at_fraction <= 1):
            errors.setdefault("warn_at_fraction", []).append(
                "The warning threshold is a share of the limit: above 0 and at most 1 (0.8 = 80%)."
            )
        if errors:
            raise ValidationError(errors)


class UsageRecord(models.Model):
    """One LLM call in the usage ledger: who, where, which model, tokens, cost.

    ``conversation_id``, ``run_id`` and ``evaluation_id`` are plain ids (accounts
    does not import the apps above it); a call belongs to a run or to an evaluation.
    ``model`` is the litellm model string or ModelConfig name.
    ``cost_usd`` is exact (Decimal, 12 decimal places); ``latency_ms`` is the
    wall time of the call in milliseconds.
    """

    user = models.ForeignKey(
        "accounts.User", on_delete=models.CASCADE, related_name="usage_records"
    )
    conversation_id = models.BigIntegerField(null=True, blank=True, db_index=True)
    run_id = models.BigIntegerField(null=True, blank=True, db_index=True)
    evaluation_id = models.BigIntegerField(
        null=True, blank=True, db_index=True, help_text="The prompt evaluation that made the call."
    )
    model = models.CharField(max_length=200, db_index=True)
    prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    cost_usd = models.DecimalField("cost (USD)", max_digits=24, decimal_places=12)
    latency_ms = models.PositiveIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ("-created_at", "-id")
        indexes: ClassVar = [models.Index(fields=["user", "created_at"])]
        constraints: ClassVar = [
            models.CheckConstraint(
                condition=Q(cost_usd__gte=0), name="accounts_usage_cost_not_negative"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.model} for {self.user_id} at {self.created_at:%Y-%m-%d %H:%M}"

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class BudgetCounter(models.Model):
    """The running spend of one budget in one period, for one scope.

    The scope follows ``Budget``: a user budget and a group budget have one
    counter per period (``scope_user_id`` = 0; a group's members share it), a
    default budget has one per user (``scope_user_id`` = that user's id; a
    plain column, so it stays unique without a nullable key).

    ``held_*`` is the sum of the budget's ``held`` reservations pointing here
    (worst cases of calls in flight), ``spent_*`` the sum of its ``settled``
    ones (actual usage); a budget's spend in the period is ``spent + held``.
    Every change to a reservation's status changes its counter in the same
    transaction, under the counter's row lock, so the counter equals the sum
    of its rows and the budget check reads one row instead of summing them.
    USD is exact (Decimal, 12 places), tokens are tokens.
    """

    budget = models.ForeignKey(Budget, on_delete=models.CASCADE, related_name="counters")
    scope_user_id = models.BigIntegerField(
        default=0, help_text="The user of a default budget's per-user count; 0 for one pool."
    )
    period_start = models.DateTimeField()
    spent_usd = models.DecimalField(max_digits=24, decimal_places=12, default=Decimal(0))
    spent_tokens = models.BigIntegerField(default=0)
    held_usd = models.DecimalField(max_digits=24, decimal_places=12, default=Decimal(0))
    held_tokens = models.BigIntegerField(default=0)

    class Meta:
        ordering = ("budget_id", "id")
        constraints: ClassVar = [
            models.UniqueConstraint(
                fields=["budget", "scope_user_id", "period_start"],
                name="accounts_budget_counter_key",
            ),
            models.CheckConstraint(
                condition=Q(spent_usd__gte=0)
                & Q(spent_tokens__gte=0)
                & Q(held_usd__gte=0)
                & Q(held_tokens__gte=0),
                name="accounts_budget_counter_not_negative",
            ),
        ]

    def __str__(self) -> str:
        start = f"{self.period_start:%Y-%m-%d}"
        return f"budget {self.budget_id} scope {self.scope_user_id} from {start}"


class BudgetReservation(models.Model):
    """An amount charged against one budget: held before a call, settled after.

    ``held``: the worst-case estimate of a call in flight; ``settled``: the
    actual usage of the call (``usage`` links the ledger row); ``released``: the
    call never happened, nothing counts. A budget's spend in a period is the sum
    of its held and settled rows created in that period, kept running in the
    row's ``counter``. ``period_start`` is the start (UTC) of the budget period
    the row was created in. The rows are the audit of every hold; the budget
    check reads the counters, never the rows.

    ``kind`` says what a row is for: ``call``, a model call's hold and, settled,
    its usage; ``approval``, held when a person approved a tool call, for what
    that call and the run's next model call may cost, released when that model
    call is admitted (its own hold replaces it) or by the expiry of old holds.
    """

    class Status(models.TextChoices):
        HELD = "held"
        SETTLED = "settled"
        RELEASED = "released"

    class Kind(models.TextChoices):
        CALL = "call", "model call"
        APPROVAL = "approval", "approved tool call"

    budget = models.ForeignKey(Budget, on_delete=models.CASCADE, related_name="reservations")
    user = models.ForeignKey(
        "accounts.User", on_delete=models.CASCADE, related_name="budget_reservations"
    )
    run_id = models.BigIntegerField(null=True, blank=True)
    usage = models.ForeignKey(
        UsageRecord,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="reservations",
    )
    cost_usd = models.DecimalField("cost (USD)", max_digits=24, decimal_places=12)
    tokens = models.BigIntegerField(default=0)
    period_start = models.DateTimeField()
    # No index: nothing looks reservations up by counter (SET_NULL only runs
    # when a counter is deleted, with its budget).
    counter = models.ForeignKey(
        BudgetCounter,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        db_index=False,
        related_name="reservations",
    )
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.HELD)
    kind = models.CharField(max_length=16, choices=Kind.choices, default=Kind.CALL)
    created_at = models.DateTimeField(default=timezone.now)
    settled_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ("-created_at", "-id")
        indexes: ClassVar = [
            models.Index(fields=["budget", "created_at"]),
            models.Index(fields=["budget", "user", "created_at"]),
            models.Index(
                fields=["created_at"], condition=Q(status="held"), name="accounts_resv_held_idx"
            ),
            # Looked up in front of every model call (budget_release_approved); a few
            # rows at most, whatever the size of the table.
            models.Index(
                fields=["run_id"],
                condition=Q(status="held", kind="approval"),
                name="accounts_resv_approval_idx",
            ),
        ]
        constraints: ClassVar = [
            models.CheckConstraint(
                condition=Q(cost_usd__gte=0) & Q(tokens__gte=0),
                name="accounts_reservation_not_negative",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.status} ${self.cost_usd} on budget {self.budget_id}"


class BudgetWarning(models.Model):
    """A user was warned that a budget passed its threshold in a period (once)."""

    budget = models.ForeignKey(Budget, on_delete=models.CASCADE, related_name="warnings")
    user = models.ForeignKey(
        "accounts.User", on_delete=models.CASCADE, related_name="budget_warnings"
    )
    period_start = models.DateTimeField()
    message = models.CharField(max_length=300)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ("-created_at", "-id")
        constraints: ClassVar = [
            models.UniqueConstraint(
                fields=["budget", "user", "period_start"], name="accounts_budget_warning_once"
            ),
        ]

    def __str__(self) -> str:
        return self.message


class RateLimit(models.Model):
    """Requests and tokens per minute for one user, one group, or everyone.

    Like budgets: a group limit is shared by all its members, a default limit
    (no user, no group) applies to each user separately, and every applicable
    limit is enforced. Counters live in Redis (in memory in embedded mode).
    """

    user = models.ForeignKey(
        "accounts.User",
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="rate_limits",
        help_text="Leave user and group empty for a default that applies to everyone.",
    )
    group = models.ForeignKey(
        "auth.Group", on_delete=models.CASCADE, null=True, blank=True, related_name="rate_limits"
    )
    requests_per_minute = models.PositiveIntegerField(
        null=True, blank=True, help_text="LLM calls per minute; empty for no limit."
    )
    tokens_per_minute = models.PositiveIntegerField(
        null=True, blank=True, help_text="Tokens (prompt + completion) per minute; empty for none."
    )
    enabled = models.BooleanField(default=True)

    class Meta:
        ordering = ("id",)
        constraints: ClassVar = [
            models.CheckConstraint(
                condition=~(Q(user__isnull=False) & Q(group__isnull=False)),
                name="accounts_ratelimit_user_xor_group",
                violation_error_message="A rate limit belongs to a user or to a group, not both.",
            ),
            models.CheckConstraint(
                condition=(Q(requests_per_minute__isnull=False) & Q(requests_per_minute__gte=1))
                | (Q(tokens_per_minute__isnull=False) & Q(tokens_per_minute__gte=1)),
                name="accounts_ratelimit_has_limit",
                violation_error_message="Set requests per minute, tokens per minute, or both.",
            ),
        ]

    def __str__(self) -> str:
        parts = []
        if self.requests_per_minute:
            parts.append(f"{self.requests_per_minute} rpm")
        if self.tokens_per_minute:
            parts.append(f"{self.tokens_per_minute} tpm")
        scope = (
            f"user {self.user}"
            if self.user_id
            else f"group {self.group}"
            if self.group_id
            else "everyone"
        )
        return f"{' / '.join(parts) or 'rate limit'} for {scope}"

    def clean(self) -> None:
        errors: dict[str, list[str]] = {}
        if self.user_id is not None and self.group_id is not None:
            errors.setdefault("group", []).append(
                "A rate limit belongs to a user or to a group, not both; clear one of them."
            )
        if self.requests_per_minute is not None and self.requests_per_minute < 1:
            errors.setdefault("requests_per_minute", []).append(
                "Requests per minute must be at least 1 (leave empty for no limit)."
            )
        if self.tokens_per_minute is not None and self.tokens_per_minute < 1:
            errors.setdefault("tokens_per_minute", []).append(
                "Tokens per minute must be at least 1 (leave empty for no limit)."
            )
        if not self.requests_per_minute and not self.tokens_per_minute and not errors:
            errors.setdefault("requests_per_minute", []).append(
                "Set requests per minute, tokens per minute, or both."
            )
        if errors:
            raise ValidationError(errors)


# --- API keys --------------------------------------------------------------------


class ApiKey(models.Model):
    """A key a user's scripts send as ``Authorization: Bearer <key>`` to the API.

    The key itself is shown once, when it is made, and never stored: ``prefix``
    (its first ``PREFIX_CHARS`` characters, unique) finds the row and is shown
    to say which key it was; ``key_hash`` is the SHA-256 of the whole key, which
    a request's key must match (compared in constant time). A key is random
    (``secrets.token_urlsafe``, 256 bits), so a fast hash is enough: nothing
    can be guessed from it, and a slow one would cost every request.

    ``scopes``: what the key may do, a list of ``Scope`` values (``chat``: chat
    completions and the model list; ``approvals``: list, read and decide the
    user's approval requests; ``read``: every read of the API, nothing else).
    A key past ``expires_at`` or with ``revoked_at`` set is refused.
    """

    class Scope(models.TextChoices):
        CHAT = "chat", "chat: chat completions and the model list"
        APPROVALS = "approvals", "approvals: list, read and decide approval requests"
        READ = "read", "read-only: list models and approval requests"

    #: Characters of the key kept (and unique): ``tg_`` and 8 random characters.
    PREFIX_CHARS = 11

    user = models.ForeignKey("accounts.User", on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=PREFIX_CHARS, unique=True)
    key_hash = models.CharField(max_length=64)
    scopes = models.JSONField(default=list)
    expires_at = models.DateTimeField(null=True, blank=True, help_text="Blank: never.")
    created_at = models.DateTimeField(default=timezone.now)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    revoked_by = models.ForeignKey(
        "accounts.User", on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )

    class Meta:
        ordering = ("-created_at", "-id")
        verbose_name = "API key"
        indexes: ClassVar = [models.Index(fields=["user", "-created_at"])]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @property
    def is_revoked(self) -> bool:
        return self.revoked_at is not None

    @property
    def is_expired(self) -> bool:
        return self.expires_at is not None and self.expires_at <= timezone.now()

    @property
    def is_active(self) -> bool:
        return not self.is_revoked and not self.is_expired

    @property
    def scope_labels(self) -> list[str]:
        labels = dict(self.Scope.choices)
        return [labels.get(scope, scope).split(":")[0] for scope in self.scopes]
