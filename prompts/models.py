"""The prompt library: prompts, their immutable versions, and labels.

A ``Prompt`` is a named, owned thing with a slash command; its text lives in
``PromptVersion`` rows, numbered 1, 2, … and never changed once written (an
edit is a new version; ``save`` and the queryset refuse an update). A
``PromptLabel`` (``production``, ``staging``, any name) points at one version
of its prompt; "latest" is implicit, the highest number. Writes go through
``prompts.services``, which audits them.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any, ClassVar

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.db import models
from django.db.models import Q

from accounts.sharing import Visibility

#: A slash command without its slash: ``summarize``, ``code-review``.
COMMAND_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,39}$")
#: A label name: ``production``, ``staging``, ``v2-candidate``.
LABEL_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,39}$")
#: The label every new prompt's first version gets, and the one followed by default.
DEFAULT_LABEL = "production"
#: Not a label one may set: the highest version, always.
LATEST = "latest"
#: The command of the deployment's reformulation instruction (a data migration makes it).
REFORMULATE_COMMAND = "reformulate"
#: What drafts are reformulated with when the deployment's /reformulate is gone
#: (an administrator deleted it); the data migration's first version says the same.
REFORMULATE_INSTRUCTION = (
    "Rewrite the user's draft message so that a language model understands it best: "
    "clear, specific and well organised. Keep its meaning, its language and every fact, "
    "name and number in it; add nothing it does not ask. Answer with the rewritten "
    "message only, with no preamble and no quotes."
)


class ImmutableVersion(Exception):
    """A prompt version may not be changed or deleted once written."""


class Prompt(models.Model):
    """A reusable prompt: a system prompt or a message template.

    ``owner`` ``None``: the deployment's own (made by a migration or an admin,
    such as the ``/reformulate`` instruction). ``command`` is unique per owner
    (one user's commands do not reveal, or collide with, another's private ones);
    the deployment's commands are reserved for everyone.
    """

    class Kind(models.TextChoices):
        SYSTEM = "system", "System prompt"
        TEMPLATE = "template", "Message template"

    Visibility = Visibility  # who else sees it: ``accounts.sharing``

    name = models.CharField(max_length=120)
    command = models.CharField(
        "slash command",
        max_length=40,
        validators=[RegexValidator(COMMAND_RE, "Lowercase letters, digits, - and _.")],
        help_text="Typed after / in the chat's composer, without the slash.",
    )
    description = models.CharField(max_length=300, blank=True)
    kind = models.CharField(max_length=16, choices=Kind.choices, default=Kind.TEMPLATE)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="prompts",
        help_text="Empty: the deployment's own prompt.",
    )
    visibility = models.CharField(
        max_length=16, choices=Visibility.choices, default=Visibility.PRIVATE
    )
    groups = models.ManyToManyField(
        "auth.Group", blank=True, related_name="prompts", help_text="Shared with these groups."
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ("name", "id")
        constraints: ClassVar = [
            models.UniqueConstraint(
                fields=["owner", "command"],
                condition=Q(owner__isnull=False),
                name="prompts_one_command_per_owner",
            ),
            models.UniqueConstraint(
                fields=["command"],
                condition=Q(owner__isnull=True),
                name="prompts_one_command_of_the_deployment",
            ),
        ]
        indexes: ClassVar = [models.Index(fields=["visibility", "kind"])]

    def __str__(self) -> str:
        return f"{self.name} (/{self.command})"


class PromptVersionQuerySet(models.QuerySet["PromptVersion"]):
    def update(self, **kwargs: Any) -> int:
        # The one change allowed: a deleted author's versions lose the link
        # (the deletion collector nulls it with an update).
        if set(kwargs) == {"author"} and kwargs["author"] is None:
            return super().update(**kwargs)
        raise ImmutableVersion("Prompt versions cannot be changed; create a new version.")


class PromptVersion(models.Model):
    """One immutable version of a prompt: its template and optional model parameters.

    ``variables``: the names the template needs (``templating.template_check``),
    stored when the version is made. ``model_name`` is a ``ModelConfig``'s name
    (the conversations app, above this one: kept by name, which also travels in
    an export); choosing the prompt as a conversation's system prompt switches
    the conversation to it. ``temperature`` and ``max_output_tokens`` apply to a
    conversation that does not set its own.
    """

    prompt = models.ForeignKey(Prompt, on_delete=models.CASCADE, related_name="versions")
    number = models.PositiveIntegerField()
    template = models.TextField()
    variables = models.JSONField(default=list, blank=True)
    model_name = models.CharField("model", max_length=100, blank=True)
    temperature = models.DecimalField(
        max_digits=3,
        decimal_places=2,
        null=True,
        blank=True,
        validators=[MinValueValidator(Decimal(0)), MaxValueValidator(Decimal(2))],
    )
    max_output_tokens = models.PositiveIntegerField(
        null=True, blank=True, validators=[MinValueValidator(1)]
    )
    change_note = models.CharField(max_length=300, blank=True)
    author = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    objects = PromptVersionQuerySet.as_manager()

    class Meta:
        ordering = ("prompt", "-number")
        constraints: ClassVar = [
            models.UniqueConstraint(fields=["prompt", "number"], name="prompts_version_number"),
        ]

    def __str__(self) -> str:
        return f"{self.prompt.name} v{self.number}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        if not self._state.adding:
            raise ImmutableVersion("Prompt versions cannot be changed; create a new version.")
        super().save(*args, **kwargs)

    def delete(self, *args: Any, **kwargs: Any) -> Any:
        raise ImmutableVersion("Prompt versions cannot be deleted (delete the prompt instead).")


class PromptLabel(models.Model):
    """A name that points at one version of its prompt; moved by ``prompt_label_move``."""

    prompt = models.ForeignKey(Prompt, on_delete=models.CASCADE, related_name="labels")
    name = models.CharField(
        max_length=40,
        validators=[RegexValidator(LABEL_RE, "Lowercase letters, digits, -, _ and .")],
    )
    version = models.ForeignKey(PromptVersion, on_delete=models.CASCADE, related_name="labels")
    updated_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ("prompt", "name")
        constraints: ClassVar = [
            models.UniqueConstraint(fields=["prompt", "name"], name="prompts_one_label_name"),
        ]

    def __str__(self) -> str:
        return f"{self.name} → v{self.version.number}"


class PromptPreference(models.Model):
    """A user's choices about prompts: the instruction their drafts are reformulated
    with (``None``: the deployment's ``/reformulate``)."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="prompt_preference"
    )
    reformulation_prompt = models.ForeignKey(
        Prompt, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )

    def __str__(self) -> str:
        return f"Prompt preferences of {self.user}"


class Evaluation(models.Model):
    """An A/B evaluation of a prompt: two variants answer every row of a dataset.

    A variant is a version of ``prompt`` and a model (a ``ModelConfig``'s name,
    as ``PromptVersion.model_name``): two versions on one model, or one version
    on two models. The calls are made by ``conversations.evaluations`` (the app
    that may call models), charged to ``owner``'s budget; ``calls_done`` of
    ``calls_total`` is the progress bar. ``estimate_usd``: the worst case of
    every call, shown before starting (``None``: a model without known prices).
    """

    class Status(models.TextChoices):
        DRAFT = "draft", "Not started"
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        COMPLETED = "completed", "Completed"
        FAILED = "failed", "Failed"

    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="evaluations"
    )
    prompt = models.ForeignKey(Prompt, on_delete=models.CASCADE, related_name="evaluations")
    version_a = models.ForeignKey(PromptVersion, on_delete=models.CASCADE, related_name="+")
    version_b = models.ForeignKey(PromptVersion, on_delete=models.CASCADE, related_name="+")
    model_a = models.CharField(max_length=100)
    model_b = models.CharField(max_length=100)
    judge = models.ForeignKey(
        PromptVersion,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        help_text="The judge prompt's version, which scores each output; empty: no judge.",
    )
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.DRAFT)
    error = models.TextField(blank=True)
    calls_total = models.PositiveIntegerField(default=0)
    calls_done = models.PositiveIntegerField(default=0)
    estimate_usd = models.DecimalField(max_digits=24, decimal_places=12, null=True, blank=True)
    estimate_tokens = models.PositiveBigIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ("-created_at", "-id")
        indexes: ClassVar = [models.Index(fields=["owner", "prompt"])]

    def __str__(self) -> str:
        return f"Evaluation {self.pk} of {self.prompt_id}"

    @property
    def is_active(self) -> bool:
        return self.status in {self.Status.QUEUED, self.Status.RUNNING}

    @property
    def percent(self) -> int:
        if not self.calls_total:
            return 100 if self.status == self.Status.COMPLETED else 0
        return min(100, round(100 * self.calls_done / self.calls_total))


class EvaluationRow(models.Model):
    """One input of an evaluation: a value for each of the prompt's variables.
    ``preferred``: the variant the user marked better (``""``: not marked)."""

    class Choice(models.TextChoices):
        NONE = "", "Not marked"
        A = "a", "A"
        B = "b", "B"
        TIE = "tie", "Tie"

    evaluation = models.ForeignKey(Evaluation, on_delete=models.CASCADE, related_name="rows")
    position = models.PositiveIntegerField()
    values = models.JSONField(default=dict)
    preferred = models.CharField(max_length=3, choices=Choice.choices, blank=True, default="")

    class Meta:
        ordering = ("evaluation", "position")
        constraints: ClassVar = [
            models.UniqueConstraint(fields=["evaluation", "position"], name="prompts_eval_row"),
        ]

    def __str__(self) -> str:
        return f"Row {self.position} of evaluation {self.evaluation_id}"


class EvaluationOutput(models.Model):
    """What one variant answered for one row, once (unique per row and variant, so
    a retried task does nothing twice), with the call's usage (tokens, USD,
    milliseconds) and the judge's score (``None``: not judged, or it failed:
    ``judge_error``)."""

    class Status(models.TextChoices):
        CALLING = "calling", "Calling"
        DONE = "done", "Done"
        FAILED = "failed", "Failed"

    evaluation = models.ForeignKey(Evaluation, on_delete=models.CASCADE, related_name="outputs")
    row = models.ForeignKey(EvaluationRow, on_delete=models.CASCADE, related_name="outputs")
    variant = models.CharField(max_length=1, choices=[("a", "A"), ("b", "B")])
    status = models.CharField(max_length=8, choices=Status.choices, default=Status.CALLING)
    text = models.TextField(blank=True)
    error = models.TextField(blank=True)
    prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    cost_usd = models.DecimalField(max_digits=24, decimal_places=12, null=True, blank=True)
    latency_ms = models.PositiveIntegerField(null=True, blank=True)
    judge_score = models.FloatField(null=True, blank=True)
    judge_error = models.TextField(blank=True)
    judge_tokens = models.PositiveIntegerField(default=0)
    judge_cost_usd = models.DecimalField(max_digits=24, decimal_places=12, null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ("row", "variant")
        constraints: ClassVar = [
            models.UniqueConstraint(fields=["row", "variant"], name="prompts_eval_output"),
        ]

    def __str__(self) -> str:
        return f"{self.variant} of row {self.row_id}"

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


#: The variables a chain step's template may use (``templating``): the message the
#: chain was run on, the answer of the step before (empty for the first step), every
#: earlier step's answer (``steps[0].response``) and, in a reflection round after the
#: first, the judge's feedback on the round before (empty otherwise).
CHAIN_VARIABLES = frozenset({"input", "previous_response", "steps", "feedback"})
#: The variables a chain step's judge template may use: as a step's, and ``response``,
#: the answer being judged.
JUDGE_VARIABLES = CHAIN_VARIABLES | {"response"}
#: The most reflection rounds a step may make (each a model call and a judge call).
MAX_ROUNDS = 5
#: The most steps a chain may have.
MAX_CHAIN_STEPS = 8


class Chain(models.Model):
    """A sequence of model calls run on one message: each step's answer feeds the next.

    Owned and shared like a ``Prompt`` (``owner`` ``None``: the deployment's own, such
    as the built-in "Draft → critique → revise"). Its ``ChainStep`` rows say what each
    step asks, of which model. Running one is ``conversations.chains``'s: a ``chain``
    run whose parts are the steps' runs. Writes go through ``prompts.services``.
    """

    name = models.CharField(max_length=120)
    description = models.CharField(max_length=300, blank=True)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="chains",
        help_text="Empty: the deployment's own chain.",
    )
    visibility = models.CharField(
        max_length=16, choices=Prompt.Visibility.choices, default=Prompt.Visibility.PRIVATE
    )
    groups = models.ManyToManyField(
        "auth.Group", blank=True, related_name="chains", help_text="Shared with these groups."
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ("name", "id")

    def __str__(self) -> str:
        return self.name


class ChainStep(models.Model):
    """One step of a chain: what it asks (a template), of which model, with or without tools.

    ``model_name``: a ``ModelConfig``'s name (the conversations app is above this one,
    as for ``PromptVersion.model_name``); blank: the conversation's model. ``template``
    may use :data:`CHAIN_VARIABLES`. Reflection: with a ``judge_template`` and
    ``max_rounds`` above 1, the step is asked again (with the judge's feedback) until
    the judge's verdict is "pass" or ``max_rounds`` answers were made; the judge
    answers with the same model unless ``judge_model_name`` names another.
    """

    chain = models.ForeignKey(Chain, on_delete=models.CASCADE, related_name="steps")
    position = models.PositiveSmallIntegerField()
    name = models.CharField(max_length=80)
    model_name = models.CharField("model", max_length=100, blank=True)
    template = models.TextField()
    tools_allowed = models.BooleanField(
        default=False, help_text="Offer the user's tools in this step (each call is gated)."
    )
    judge_template = models.TextField(
        blank=True, help_text="Empty: no reflection. Asked of a judge after each round."
    )
    judge_model_name = models.CharField("judge model", max_length=100, blank=True)
    max_rounds = models.PositiveSmallIntegerField(
        default=1, validators=[MinValueValidator(1), MaxValueValidator(MAX_ROUNDS)]
    )

    class Meta:
        ordering = ("chain", "position")
        constraints: ClassVar = [
            models.UniqueConstraint(
                fields=["chain", "position"], name="prompts_one_step_per_place"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.chain.name} · {self.position + 1}. {self.name}"
