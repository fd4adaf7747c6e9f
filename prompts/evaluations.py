"""A/B evaluations of a prompt: the dataset, the evaluation's rows, the user's marks,
and the summary per variant. Reads and writes of ``Evaluation`` rows; the model
calls are made by ``conversations.evaluations`` (the app allowed to call models).

A dataset is CSV text with a header row: one column per variable of the
prompt's versions (every variable either version declares), at most
:data:`MAX_ROWS` rows. A system prompt's rows also need an ``input`` column, the
user message the system prompt answers. Refusals raise ``PromptError`` with a
message for people; nothing is written.
"""

from __future__ import annotations

import csv
import io
import statistics
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.db import transaction

from audit.services import audit_deferred, audit_record
from prompts.errors import PromptError, PromptNotFound
from prompts.models import Evaluation, EvaluationOutput, EvaluationRow, Prompt, PromptVersion
from prompts.selectors import (
    model_names_available,
    prompt_get,
    prompt_version_get,
    prompt_version_resolve,
)

#: Most rows an evaluation may have (each row is two model calls, four with a judge).
MAX_ROWS = 200
#: Most characters of a dataset's CSV text, and of one value.
MAX_DATASET_CHARS = 200_000
MAX_VALUE_CHARS = 10_000
#: The column a system prompt's rows carry as the user's message.
INPUT = "input"
VARIANTS = ("a", "b")


def dataset_columns(*, prompt: Prompt, versions: list[PromptVersion]) -> list[str]:
    """The columns a dataset for ``versions`` of ``prompt`` needs, in order: every
    declared variable (version A's first), and ``input`` for a system prompt."""
    needed: list[str] = []
    for version in versions:
        needed += [name for name in version.variables if name not in needed]
    if prompt.kind == Prompt.Kind.SYSTEM and INPUT not in needed:
        needed.append(INPUT)
    return needed


def dataset_parse(text: str, *, columns: list[str]) -> list[dict[str, str]]:
    """Rows of ``text`` (CSV, header first) as ``{column: value}`` for ``columns``.

    Extra columns are ignored. Raises ``PromptError`` naming the problem: an empty
    dataset, a missing column (named), a row with a missing value (its line), more
    than :data:`MAX_ROWS` rows, a value over :data:`MAX_VALUE_CHARS` characters,
    text that is not CSV.
    """
    text = text.lstrip("\ufeff")
    if len(text) > MAX_DATASET_CHARS:
        raise PromptError(f"The dataset is longer than {MAX_DATASET_CHARS:,} characters.")
    if not text.strip():
        raise PromptError("The dataset is empty: give a header row and at least one row.")
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""), strict=True)
        header = [name.strip() for name in reader.fieldnames or []]
        missing = [name for name in columns if name not in header]
        if missing:
            names = ", ".join(missing)
            label = "column" if len(missing) == 1 else "columns"
            raise PromptError(
                f"The dataset has no {label} {names}: its header must name "
                f"{', '.join(columns) or 'at least one column'}."
            )
        rows: list[dict[str, str]] = []
        for raw in reader:
            values = {(k or "").strip(): (v or "") for k, v in raw.items() if k is not None}
            if not any(value.strip() for value in values.values()):
                continue  # a blank line
            if len(rows) == MAX_ROWS:
                raise PromptError(f"The dataset has more than {MAX_ROWS} rows; split it.")
            row = {}
            for name in columns:
                value = values.get(name, "").strip()
                if not value:
                    raise PromptError(f"Line {reader.line_num}: no value for {name}.")
                if len(value) > MAX_VALUE_CHARS:
                    raise PromptError(
                        f"Line {reader.line_num}: {name} is longer than {MAX_VALUE_CHARS:,} "
                        "characters."
                    )
                row[name] = value
            rows.append(row)
    except csv.Error as error:
        raise PromptError(f"The dataset is not valid CSV: {error}.") from None
    if not rows:
        raise PromptError("The dataset has a header but no rows.")
    return rows


def _model(name: str) -> str:
    name = name.strip()
    available = model_names_available()
    if not name or (available is not None and name not in available):
        raise PromptError(f"Choose an available model (not {name!r}).")
    return name


def evaluation_create(
    *,
    user: Any,
    prompt_id: int,
    version_a: int,
    version_b: int,
    model_a: str,
    model_b: str,
    dataset: str,
    judge_prompt_id: int | None = None,
) -> Evaluation:
    """A new evaluation (not started) of ``user``'s visible prompt ``prompt_id``:
    variant A is version number ``version_a`` on the model named ``model_a``,
    variant B ``version_b`` on ``model_b``; one row per row of ``dataset`` (CSV,
    :func:`dataset_parse`). ``judge_prompt_id``: a prompt the user may see whose
    ``production`` version scores each output (it receives ``input``, ``output``
    and the row's variables). Audited as ``evaluation.created``.

    Raises ``PromptNotFound`` (a prompt the user may not see), ``PromptError``
    (the same variant twice, an unknown model or version, a bad dataset).
    """
    prompt = prompt_get(user=user, prompt_id=prompt_id)
    first = prompt_version_get(prompt=prompt, number=version_a)
    second = prompt_version_get(prompt=prompt, number=version_b)
    model_a, model_b = _model(model_a), _model(model_b)
    if first.pk == second.pk and model_a == model_b:
        raise PromptError("Choose two versions, or two models for one version.")
    judge = None
    if judge_prompt_id is not None:
        try:
            judge_prompt = prompt_get(user=user, prompt_id=judge_prompt_id)
        except PromptNotFound:
            raise PromptError("Choose a judge prompt you can see.") from None
        judge = prompt_version_resolve(prompt=judge_prompt)
    rows = dataset_parse(dataset, columns=dataset_columns(prompt=prompt, versions=[first, second]))
    with transaction.atomic(), audit_deferred():
        evaluation = Evaluation.objects.create(
            owner=user,
            prompt=prompt,
            version_a=first,
            version_b=second,
            model_a=model_a,
            model_b=model_b,
            judge=judge,
            calls_total=len(rows) * len(VARIANTS) * (2 if judge else 1),
        )
        EvaluationRow.objects.bulk_create(
            EvaluationRow(evaluation=evaluation, position=n, values=values)
            for n, values in enumerate(rows, start=1)
        )
        audit_record(
            action="evaluation.created",
            actor=user,
            target_type="evaluation",
            target_id=evaluation.pk,
            data={
                "prompt_id": prompt.pk,
                "version_a": first.number,
                "version_b": second.number,
                "model_a": model_a,
                "model_b": model_b,
                "judge_version_id": judge.pk if judge else None,
                "rows": len(rows),
            },
        )
    return evaluation


def evaluation_get(*, user: Any, evaluation_id: int) -> Evaluation:
    """``user``'s own evaluation with its prompt and versions; ``PromptNotFound`` for
    anyone else's (a user sees only the evaluations they made)."""
    evaluation = (
        Evaluation.objects.select_related("prompt", "version_a", "version_b", "judge__prompt")
        .filter(pk=evaluation_id, owner=user)
        .first()
    )
    if evaluation is None:
        raise PromptNotFound("Evaluation not found.")
    return evaluation


def evaluations_of(*, user: Any, prompt: Prompt) -> list[Evaluation]:
    """``user``'s evaluations of ``prompt``, newest first (one query)."""
    return list(
        Evaluation.objects.filter(owner=user, prompt=prompt).select_related(
            "version_a", "version_b"
        )[:20]
    )


def evaluation_mark(*, user: Any, evaluation_id: int, position: int, choice: str) -> EvaluationRow:
    """Record which output of row ``position`` ``user`` finds better: ``"a"``,
    ``"b"``, ``"tie"``, or ``""`` (unmark). Raises ``PromptNotFound`` (not theirs,
    no such row) and ``PromptError`` (another choice, a row not answered yet)."""
    if choice not in EvaluationRow.Choice.values:
        raise PromptError("Mark A, B or a tie.")
    with transaction.atomic(), audit_deferred():
        evaluation = evaluation_get(user=user, evaluation_id=evaluation_id)
        row = (
            EvaluationRow.objects.select_for_update()
            .filter(evaluation=evaluation, position=position)
            .first()
        )
        if row is None:
            raise PromptNotFound("No such row.")
        done = EvaluationOutput.objects.filter(row=row, status=EvaluationOutput.Status.DONE)
        if choice and done.count() < len(VARIANTS):
            raise PromptError("Both outputs of this row must be there before it can be marked.")
        row.preferred = choice
        row.save(update_fields=["preferred"])
        audit_record(
            action="evaluation.marked",
            actor=user,
            target_type="evaluation",
            target_id=evaluation.pk,
            data={"row": position, "preferred": choice},
        )
    return row


@dataclass(frozen=True)
class VariantSummary:
    """One variant's line of the summary table: ``win_rate`` (0-1 of the marked rows,
    a tie counting half; ``None``: none marked), ``judge_mean`` (``None``: none
    judged), ``tokens``, ``cost_usd`` (the answers' calls; the judge's apart),
    ``latency_p50_ms`` (``None``: no answer yet)."""

    variant: str
    version: PromptVersion
    model: str
    answered: int
    failed: int
    wins: float
    marked: int
    judge_mean: float | None
    tokens: int
    cost_usd: Decimal
    judge_cost_usd: Decimal
    latency_p50_ms: float | None

    @property
    def win_rate(self) -> float | None:
        return self.wins / self.marked if self.marked else None

    @property
    def win_percent(self) -> int | None:
        rate = self.win_rate
        return None if rate is None else round(rate * 100)


@dataclass(frozen=True)
class EvaluationResults:
    """An evaluation's rows in order, each with ``row.pairs`` (``[("a", output),
    ("b", output)]``, ``None`` when not answered yet) and ``row.both_done``, and the
    summary per variant."""

    evaluation: Evaluation
    rows: list[EvaluationRow]
    summary: list[VariantSummary]


def evaluation_results(*, user: Any, evaluation_id: int) -> EvaluationResults:
    """``user``'s evaluation with its rows, outputs and summary; three queries
    whatever the number of rows. ``PromptNotFound`` for anyone else's."""
    evaluation = evaluation_get(user=user, evaluation_id=evaluation_id)
    rows = list(EvaluationRow.objects.filter(evaluation=evaluation).order_by("position"))
    outputs = list(EvaluationOutput.objects.filter(evaluation=evaluation))
    by_row: dict[int, dict[str, EvaluationOutput]] = {}
    for output in outputs:
        by_row.setdefault(output.row_id, {})[output.variant] = output
    for row in rows:
        found = by_row.get(row.pk, {})
        row.pairs = [(v, found.get(v)) for v in VARIANTS]  # type: ignore[attr-defined]
        row.both_done = all(  # type: ignore[attr-defined]
            o is not None and o.status == EvaluationOutput.Status.DONE
            for _, o in row.pairs  # type: ignore[attr-defined]
        )
    summary = []
    for variant, version, model in (
        ("a", evaluation.version_a, evaluation.model_a),
        ("b", evaluation.version_b, evaluation.model_b),
    ):
        mine = [o for o in outputs if o.variant == variant]
        done = [o for o in mine if o.status == EvaluationOutput.Status.DONE]
        marked = [r for r in rows if r.preferred]
        wins = sum(
            1.0 if r.preferred == variant else 0.5 if r.preferred == "tie" else 0.0 for r in marked
        )
        scores = [o.judge_score for o in done if o.judge_score is not None]
        latencies = [o.latency_ms for o in done if o.latency_ms is not None]
        summary.append(
            VariantSummary(
                variant=variant,
                version=version,
                model=model,
                answered=len(done),
                failed=sum(o.status == EvaluationOutput.Status.FAILED for o in mine),
                wins=wins,
                marked=len(marked),
                judge_mean=statistics.fmean(scores) if scores else None,
                tokens=sum(o.tokens for o in mine),
                cost_usd=sum((o.cost_usd or Decimal(0) for o in mine), Decimal(0)),
                judge_cost_usd=sum((o.judge_cost_usd or Decimal(0) for o in mine), Decimal(0)),
                latency_p50_ms=statistics.median(latencies) if latencies else None,
            )
        )
    return EvaluationResults(evaluation=evaluation, rows=rows, summary=summary)
