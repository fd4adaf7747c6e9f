"""Running an A/B evaluation of a prompt (``prompts.Evaluation``): the model calls.

The evaluation's rows and marks are ``prompts.evaluations``; the calls are here,
in the app that may call models. Each call is charged like every other
(``conversations.charging``, the pattern of ``conversations.reformulation``):
the rate limits and the budget hold first (a refusal audited as
``budget.refused``), the usage settled after into the usage ledger, audited as
``llm.call`` on ``("evaluation", id)`` with the row and variant. No call offers
tools.

- :func:`evaluation_estimate`: the worst case of every call of an evaluation
  (``gateway.worst_case_cost``, the figure each call's hold reserves, summed;
  the prompt counted at one token per UTF-8 byte, more than any tokenizer).
- :func:`evaluation_start`: refuses an evaluation whose estimate passes what is
  left of the user's budgets, before any call; else queues it
  (``evaluation.started``) and announces it on commit (:data:`evaluation_due`,
  received by ``conversations.dispatch``: a Celery task, or a thread).
- :func:`evaluation_process`: answers every row with both variants, then has the
  judge score each output; each result is stored once under its unique key
  (row, variant), so a redelivered task does nothing twice; ``calls_done``
  moves the page's progress bar; ``evaluation.finished`` at the end.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from typing import Any

import jsonschema
from django.conf import settings
from django.db import IntegrityError, transaction
from django.dispatch import Signal
from django.utils import timezone

from accounts.selectors import budget_requires_prices, budget_statuses
from accounts.services import Admission
from audit.services import audit_deferred, audit_record
from conversations.charging import call_abort, call_admit, call_settle, unpriced_message
from conversations.context import context_fit
from conversations.gateway import CallUsage, GatewayError, stream_chat, worst_case_cost
from conversations.models import ModelConfig
from conversations.selectors import model_configs_chat
from project.dbthreads import db_async
from prompts.errors import PROMPT_REFUSALS, PromptError
from prompts.evaluations import INPUT, VARIANTS, evaluation_get
from prompts.models import Evaluation, EvaluationOutput, EvaluationRow, Prompt, PromptVersion
from prompts.templating import template_render

logger = logging.getLogger(__name__)

#: Sent on commit when an evaluation is queued (``evaluation_id``); ``conversations
#: .dispatch`` receives it and runs :func:`evaluation_process` (Celery or a thread).
evaluation_due = Signal()
#: The variable a judge prompt reads the rendered prompt from, and the output from.
JUDGE_INPUT = "input"
JUDGE_OUTPUT = "output"
#: What a judge must answer: a JSON object with a numeric ``score``.
JUDGE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"score": {"type": "number"}},
    "required": ["score"],
}
#: An output left "calling" this long by a worker that died is called again.
STALE_CALL = timedelta(minutes=5)
#: Tokens added per message to the byte count of its text (role, separators).
MESSAGE_OVERHEAD = 8


class EvaluationRefused(PromptError):
    """An evaluation may not start (its estimate passes the budget, a model is
    gone, it was started already); ``str(error)`` says why, for people."""


# -- what each call sends ---------------------------------------------------------------


def _config(name: str) -> ModelConfig:
    config = model_configs_chat().filter(name=name).first()
    if config is None:
        raise EvaluationRefused(f"The model {name} is not available any more.")
    return config


def _max_chars() -> int:
    return int(settings.TOLLGATE_MAX_MESSAGE_CHARS) * 2


def _messages(prompt: Prompt, version: PromptVersion, values: dict[str, str]) -> list[dict]:
    """A variant's messages for one row: the rendered template as the user's message,
    or, for a system prompt, as the system message before the row's ``input``."""
    text = template_render(version.template, values, max_chars=_max_chars())
    if prompt.kind == Prompt.Kind.SYSTEM:
        return [{"role": "system", "content": text}, {"role": "user", "content": values[INPUT]}]
    return [{"role": "user", "content": text}]


def _judge_messages(
    judge: PromptVersion, values: dict[str, str], asked: list[dict], output: str
) -> list[dict]:
    """The judge's one user message: its template with the row's variables, ``input``
    (what the variant was sent, its last message) and ``output``."""
    context = {**values, JUDGE_INPUT: asked[-1]["content"], JUDGE_OUTPUT: output}
    return [
        {
            "role": "user",
            "content": template_render(judge.template, context, max_chars=_max_chars()),
        }
    ]


def _max_tokens(config: ModelConfig, version: PromptVersion | None) -> int:
    limit = config.max_output_tokens
    if version is not None and version.max_output_tokens:
        limit = min(limit, version.max_output_tokens)
    return limit


def _upper_tokens(messages: list[dict]) -> int:
    # A token is at least one byte for every tokenizer litellm uses: an upper bound.
    return sum(len(m["content"].encode()) + MESSAGE_OVERHEAD for m in messages)


def _judge_config(evaluation: Evaluation) -> ModelConfig:
    """The judge's model: the one its version names when enabled, else variant A's."""
    judge = evaluation.judge
    if judge is not None and judge.model_name:
        found = model_configs_chat().filter(name=judge.model_name).first()
        if found is not None:
            return found
    return _config(evaluation.model_a)


def _variant(evaluation: Evaluation, variant: str) -> tuple[PromptVersion, str]:
    if variant == "a":
        return evaluation.version_a, evaluation.model_a
    return evaluation.version_b, evaluation.model_b


# -- the estimate and the start ---------------------------------------------------------


@dataclass(frozen=True)
class Estimate:
    """The worst case of an evaluation's calls: ``cost_usd`` (``None`` when a model
    has no known price), ``tokens``, ``calls``."""

    cost_usd: Decimal | None
    tokens: int
    calls: int


def evaluation_estimate(*, evaluation: Evaluation) -> Estimate:
    """Sum of what each call's budget hold would reserve (``worst_case_cost`` of its
    prompt, counted high, plus the most it may answer). A judge's prompt counts the
    answer it reads at the answer's maximum. Needs litellm imported (a model
    without prices of its own is priced from litellm's map). Raises
    ``EvaluationRefused`` (a model gone) and the prompt refusals (a template)."""
    rows = list(evaluation.rows.order_by("position"))
    judge_config = _judge_config(evaluation) if evaluation.judge else None
    total: Decimal | None = Decimal(0)
    tokens = calls = 0
    for variant in VARIANTS:
        version, name = _variant(evaluation, variant)
        config = _config(name)
        answer_max = _max_tokens(config, version)
        for row in rows:
            asked = _messages(evaluation.prompt, version, row.values)
            costs = [(config, _upper_tokens(asked), answer_max)]
            if evaluation.judge is not None and judge_config is not None:
                judged = _judge_messages(evaluation.judge, row.values, asked, "")
                costs.append(
                    (
                        judge_config,
                        _upper_tokens(judged) + answer_max,
                        _max_tokens(judge_config, evaluation.judge),
                    )
                )
            for cfg, prompt_tokens, max_tokens in costs:
                cost = worst_case_cost(
                    config=cfg, prompt_tokens=prompt_tokens, max_tokens=max_tokens
                )
                total = None if cost is None or total is None else total + cost
                tokens += prompt_tokens + max_tokens
                calls += 1
    return Estimate(cost_usd=total, tokens=tokens, calls=calls)


def _over_budget(user: Any, estimate: Estimate, models: list[ModelConfig]) -> str:
    """Why ``estimate`` may not start for ``user`` ("" when it may)."""
    if estimate.cost_usd is None and budget_requires_prices(user=user):
        unpriced = next(
            (c for c in models if worst_case_cost(config=c, prompt_tokens=1) is None), models[0]
        )
        return unpriced_message(unpriced)
    for status in budget_statuses(user=user):
        left_usd = status.remaining_usd
        if left_usd is not None and estimate.cost_usd is not None and estimate.cost_usd > left_usd:
            return (
                f"This evaluation may cost up to ${estimate.cost_usd:.4f} ({estimate.calls} "
                f"calls at their worst case), more than the ${left_usd:.4f} left of your "
                f"budget {status.budget}. Use fewer rows or a cheaper model."
            )
        left_tokens = status.remaining_tokens
        if left_tokens is not None and estimate.tokens > left_tokens:
            return (
                f"This evaluation may use up to {estimate.tokens:,} tokens ({estimate.calls} "
                f"calls at their worst case), more than the {left_tokens:,} left of your "
                f"budget {status.budget}. Use fewer rows or shorter answers."
            )
    return ""


def evaluation_quote(*, user: Any, evaluation: Evaluation) -> tuple[Estimate | None, str]:
    """What the page shows before the start: the estimate, and why the start would be
    refused ("" when it would not): a budget it would pass, a model gone, a
    template that cannot render a row. Needs litellm imported, as the estimate."""
    try:
        estimate = evaluation_estimate(evaluation=evaluation)
        models = [_config(evaluation.model_a), _config(evaluation.model_b)]
    except PROMPT_REFUSALS as error:  # EvaluationRefused is one
        return None, f"This evaluation cannot run: {error}"
    return estimate, _over_budget(user, estimate, models)


def evaluation_start(*, user: Any, evaluation_id: int) -> Evaluation:
    """Queue ``user``'s evaluation ``evaluation_id`` (not started yet) for its calls.

    The estimate (:func:`evaluation_estimate`) is stored and checked against what
    is left of every budget that applies to ``user``; one that would pass it is
    refused before any call, audited as ``evaluation.refused`` with the figures.
    Otherwise the evaluation is ``queued``, audited as ``evaluation.started``, and
    :data:`evaluation_due` is sent on commit. Each call is still admitted on its
    own when it is made (``charging.call_admit``). Needs litellm imported
    (``dispatch.gateway_ready``). Raises ``PromptNotFound`` (not theirs) and
    ``EvaluationRefused``.
    """
    refusal = ""
    with transaction.atomic(), audit_deferred():
        evaluation = evaluation_get(user=user, evaluation_id=evaluation_id)
        evaluation = (
            Evaluation.objects.select_for_update(no_key=True, of=("self",))
            .select_related("prompt", "version_a", "version_b", "judge")
            .get(pk=evaluation.pk)
        )
        if evaluation.status != Evaluation.Status.DRAFT:
            raise EvaluationRefused("This evaluation has been started already.")
        try:
            estimate = evaluation_estimate(evaluation=evaluation)
        except PROMPT_REFUSALS as error:
            raise EvaluationRefused(f"This evaluation cannot run: {error}") from None
        models = [_config(evaluation.model_a), _config(evaluation.model_b)]
        evaluation.estimate_usd = estimate.cost_usd
        evaluation.estimate_tokens = estimate.tokens
        refusal = _over_budget(user, estimate, models)
        data = {
            "estimated_cost_usd": str(estimate.cost_usd) if estimate.cost_usd is not None else None,
            "estimated_tokens": estimate.tokens,
            "calls": estimate.calls,
        }
        if refusal:
            evaluation.save(update_fields=["estimate_usd", "estimate_tokens"])
            audit_record(
                action="evaluation.refused",
                actor=user,
                target_type="evaluation",
                target_id=evaluation.pk,
                data={**data, "message": refusal},
            )
        else:
            evaluation.status = Evaluation.Status.QUEUED
            evaluation.started_at = timezone.now()
            evaluation.save(
                update_fields=["estimate_usd", "estimate_tokens", "status", "started_at"]
            )
            audit_record(
                action="evaluation.started",
                actor=user,
                target_type="evaluation",
                target_id=evaluation.pk,
                data=data,
            )
            pk = evaluation.pk
            transaction.on_commit(lambda: evaluation_due.send(sender=Evaluation, evaluation_id=pk))
    if refusal:  # raised after the commit, so the refusal's audit event stays
        raise EvaluationRefused(refusal)
    return evaluation


# -- the calls --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Admitted:
    config: ModelConfig
    messages: list[dict]
    max_tokens: int
    admission: Admission


@dataclass(frozen=True)
class _Call:
    """What one call answered: its text and usage, or ``error`` for people."""

    text: str = ""
    error: str = ""
    usage: CallUsage | None = None
    latency_ms: int | None = None


@db_async
def _admit(
    evaluation: Evaluation, config: ModelConfig, messages: list[dict], max_tokens: int
) -> _Admitted | str:
    """Fit and admit one call (the budget hold commits), or the refusal's message."""
    with transaction.atomic(), audit_deferred():
        try:
            fit = context_fit(
                messages=messages,
                model=config.litellm_model,
                context_window=config.context_window,
                max_output_tokens=max_tokens,
            )
        except GatewayError as error:
            return error.user_message
        admission, refusal = call_admit(
            user=evaluation.owner,
            config=config,
            prompt_tokens=fit.prompt_tokens,
            max_tokens=max_tokens,
            run_id=None,
            target_type="evaluation",
            target_id=evaluation.pk,
        )
    if admission is None:
        return refusal
    return _Admitted(config, messages, max_tokens, admission)


@db_async
def _settle(
    evaluation: Evaluation,
    admitted: _Admitted,
    *,
    output_id: int,
    usage: CallUsage,
    latency_ms: int | None,
    model: str,
    data: dict[str, Any],
    store: dict[str, Any],
) -> None:
    """Charge the call (``charging.call_settle``) and store its result on the output
    (``store``: fields to write) in one transaction."""
    with transaction.atomic(), audit_deferred():
        output = EvaluationOutput.objects.select_for_update().get(pk=output_id)
        for field, value in store.items():
            setattr(output, field, value)
        output.save(update_fields=[*store, "updated_at"])
        call_settle(
            admission=admitted.admission,
            user=evaluation.owner,
            conversation_id=None,
            model=model or admitted.config.litellm_model,
            usage=usage,
            latency_ms=latency_ms,
            target_type="evaluation",
            target_id=evaluation.pk,
            data=data,
            evaluation_id=evaluation.pk,
        )


async def _call(
    evaluation: Evaluation,
    config: ModelConfig,
    messages: list[dict],
    *,
    max_tokens: int,
    temperature: Decimal | None,
    purpose: str,
    output_id: int,
    data: dict[str, Any],
    store: Any,
) -> _Call:
    """One charged call without tools; ``store(call)`` gives the fields of output
    ``output_id`` to write with its usage. A refused call stores nothing here."""
    admitted = await _admit(evaluation, config, messages, max_tokens)
    if isinstance(admitted, str):
        return _Call(error=admitted)
    try:
        result = await stream_chat(
            config=config,
            messages=messages,
            max_tokens=max_tokens,
            temperature=temperature,
            purpose=purpose,
        )
    except GatewayError as error:
        if error.usage is None:  # the provider never began answering
            await call_abort(admitted.admission)
            return _Call(error=error.user_message)
        call = _Call(error=error.user_message, usage=error.usage)
        await _settle(
            evaluation,
            admitted,
            output_id=output_id,
            usage=error.usage,
            latency_ms=None,
            model="",
            data={**data, "outcome": "failed"},
            store=store(call),
        )
        return call
    except BaseException:
        await call_abort(admitted.admission)
        raise
    call = _Call(text=result.content.strip(), usage=result.charged, latency_ms=result.latency_ms)
    await _settle(
        evaluation,
        admitted,
        output_id=output_id,
        usage=result.charged,
        latency_ms=result.latency_ms,
        model=result.model,
        data=data,
        store=store(call),
    )
    return call


def judge_score(text: str) -> float:
    """The score in a judge's answer: a JSON object (alone, or the first ``{…}`` in the
    text) valid against :data:`JUDGE_SCHEMA`. Raises ``ValueError`` saying why."""
    candidates = [text.strip()]
    found = re.search(r"\{.*?\}", text, re.S)
    if found:
        candidates.append(found.group(0))
    for candidate in candidates:
        try:
            data = json.loads(candidate)
        except ValueError:
            continue
        try:
            jsonschema.validate(data, JUDGE_SCHEMA)
        except jsonschema.ValidationError as error:
            raise ValueError(
                f"The judge's answer is not a valid verdict: {error.message}."
            ) from None
        return float(data["score"])
    raise ValueError('The judge did not answer with JSON like {"score": 7}.')


# -- one output, claimed once -----------------------------------------------------------


@db_async
def _claim(evaluation: Evaluation, row: EvaluationRow, variant: str) -> tuple[int | None, bool]:
    """The output of ``row`` and ``variant`` and whether to call for it: ``(id, True)``
    when it is now marked ``calling`` for this worker, ``(id, False)`` when it is
    answered already (its judge may be due), ``(None, False)`` when another worker
    is calling for it (lately)."""
    with transaction.atomic():
        output = EvaluationOutput.objects.select_for_update().filter(row=row, variant=variant)
        existing = output.first()
        if existing is None:
            try:
                with transaction.atomic():
                    created = EvaluationOutput.objects.create(
                        evaluation=evaluation, row=row, variant=variant
                    )
            except IntegrityError:  # another worker claimed it first
                return None, False
            return created.pk, True
        if existing.status != EvaluationOutput.Status.CALLING:
            return existing.pk, False
        if existing.updated_at > timezone.now() - STALE_CALL:
            return None, False
        existing.save(update_fields=["updated_at"])  # taken over from a worker that died
        return existing.pk, True


@db_async
def _fail(output_id: int, error: str, *, judge: bool = False) -> None:
    with transaction.atomic():
        output = EvaluationOutput.objects.select_for_update().get(pk=output_id)
        if judge:
            output.judge_error = error
        else:
            output.status, output.error = EvaluationOutput.Status.FAILED, error
        output.save()


@db_async
def _to_judge(evaluation: Evaluation, output_id: int, *, takeover: bool) -> EvaluationOutput | None:
    """Output ``output_id`` when it still needs the judge's score, claimed for it (its
    ``updated_at`` touched). ``takeover``: this worker did not answer it, so it may
    judge it only once whoever did has left it alone for :data:`STALE_CALL`."""
    with transaction.atomic():
        output = EvaluationOutput.objects.select_for_update().get(pk=output_id)
        if (
            evaluation.judge is None
            or output.status != EvaluationOutput.Status.DONE
            or output.judge_score is not None
            or output.judge_error
            or (takeover and output.updated_at > timezone.now() - STALE_CALL)
        ):
            return None
        output.save(update_fields=["updated_at"])
        return output


@db_async
def _progress(evaluation_id: int) -> None:
    """``calls_done``: outputs answered or failed, and outputs judged or failed to be."""
    outputs = EvaluationOutput.objects.filter(evaluation_id=evaluation_id)
    answered = outputs.exclude(status=EvaluationOutput.Status.CALLING).count()
    judged = (
        outputs.filter(judge_score__isnull=False).count() + outputs.exclude(judge_error="").count()
    )
    Evaluation.objects.filter(pk=evaluation_id).update(calls_done=answered + judged)


async def _answer(evaluation: Evaluation, row: EvaluationRow, variant: str) -> None:
    output_id, to_call = await _claim(evaluation, row, variant)
    if output_id is None:
        return
    version, name = _variant(evaluation, variant)
    data = {
        "purpose": "evaluation",
        "row": row.position,
        "variant": variant,
        "prompt_version_id": version.pk,
    }
    try:
        config = await db_async(_config)(name)
        messages = _messages(evaluation.prompt, version, row.values)
    except PROMPT_REFUSALS as error:  # EvaluationRefused is one
        if to_call:
            await _fail(output_id, str(error))
        return
    if not to_call:  # answered before (a redelivered task): only its judge may be due
        await _judge(evaluation, row, variant, output_id, messages, takeover=True)
        return
    call = await _call(
        evaluation,
        config,
        messages,
        max_tokens=_max_tokens(config, version),
        temperature=version.temperature,
        purpose="",
        output_id=output_id,
        data=data,
        store=lambda c: {
            "status": EvaluationOutput.Status.FAILED if c.error else EvaluationOutput.Status.DONE,
            "text": c.text,
            "error": c.error,
            "prompt_tokens": c.usage.prompt_tokens if c.usage else 0,
            "completion_tokens": c.usage.completion_tokens if c.usage else 0,
            "cost_usd": c.usage.cost_usd if c.usage else None,
            "latency_ms": c.latency_ms,
        },
    )
    if call.usage is None and call.error:  # refused, or no answer began: nothing charged
        await _fail(output_id, call.error)
    if not call.error:
        await _judge(evaluation, row, variant, output_id, messages)


async def _judge(
    evaluation: Evaluation,
    row: EvaluationRow,
    variant: str,
    output_id: int,
    asked: list[dict],
    *,
    takeover: bool = False,
) -> None:
    output = await _to_judge(evaluation, output_id, takeover=takeover)
    if output is None or evaluation.judge is None:
        return
    data = {
        "purpose": "evaluation_judge",
        "row": row.position,
        "variant": variant,
        "judge_version_id": evaluation.judge.pk,
    }
    try:
        config = await db_async(_judge_config)(evaluation)
        messages = _judge_messages(evaluation.judge, row.values, asked, output.text)
    except PROMPT_REFUSALS as error:  # EvaluationRefused is one
        await _fail(output_id, f"The judge cannot run: {error}", judge=True)
        return

    def store(call: _Call) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "judge_tokens": (call.usage.prompt_tokens + call.usage.completion_tokens)
            if call.usage
            else 0,
            "judge_cost_usd": call.usage.cost_usd if call.usage else None,
        }
        try:
            fields["judge_score"] = None if call.error else judge_score(call.text)
            fields["judge_error"] = call.error
        except ValueError as error:
            fields["judge_error"] = str(error)
        return fields

    call = await _call(
        evaluation,
        config,
        messages,
        max_tokens=_max_tokens(config, evaluation.judge),
        temperature=evaluation.judge.temperature,
        purpose="judge",
        output_id=output_id,
        data=data,
        store=store,
    )
    if call.usage is None and call.error:
        await _fail(output_id, call.error, judge=True)


# -- the whole evaluation ---------------------------------------------------------------


@db_async
def _begin(evaluation_id: int) -> Evaluation | None:
    """The evaluation to work on, moved from ``queued`` to ``running``; ``None`` when
    it is not queued or running (finished, or never started)."""
    with transaction.atomic():
        evaluation = (
            Evaluation.objects.select_for_update(no_key=True, of=("self",))
            .select_related("owner", "prompt", "version_a", "version_b", "judge")
            .filter(pk=evaluation_id)
            .first()
        )
        if evaluation is None or not evaluation.is_active:
            return None
        if evaluation.status == Evaluation.Status.QUEUED:
            evaluation.status = Evaluation.Status.RUNNING
            evaluation.save(update_fields=["status"])
    evaluation.row_list = list(evaluation.rows.order_by("position"))  # type: ignore[attr-defined]
    return evaluation


@db_async
def _finish(evaluation_id: int, error: str = "") -> None:
    """Complete the evaluation once every output is answered (or failed) and judged
    (or failed to be); left running while another worker's call is in flight (that
    worker finishes it). ``error``: fail it with that message at once."""
    with transaction.atomic(), audit_deferred():
        evaluation = Evaluation.objects.select_for_update(no_key=True).get(pk=evaluation_id)
        if not evaluation.is_active:
            return
        outputs = EvaluationOutput.objects.filter(evaluation=evaluation)
        pending = outputs.filter(status=EvaluationOutput.Status.CALLING).exists() or (
            outputs.count() < evaluation.rows.count() * len(VARIANTS)
        )
        if evaluation.judge_id is not None:
            pending = pending or (
                outputs.filter(
                    status=EvaluationOutput.Status.DONE, judge_score__isnull=True, judge_error=""
                ).exists()
            )
        if pending and not error:  # another worker's calls are still going: it finishes
            return
        failed = outputs.filter(status=EvaluationOutput.Status.FAILED).count()
        evaluation.status = Evaluation.Status.FAILED if error else Evaluation.Status.COMPLETED
        evaluation.error = error
        evaluation.finished_at = timezone.now()
        evaluation.save(update_fields=["status", "error", "finished_at"])
        audit_record(
            action="evaluation.finished",
            actor=evaluation.owner_id,
            target_type="evaluation",
            target_id=evaluation.pk,
            data={
                "status": evaluation.status,
                "outputs": outputs.count(),
                "failed": failed,
                "error": error,
            },
        )


async def evaluation_process(*, evaluation_id: int) -> None:
    """Make every call of queued evaluation ``evaluation_id`` not made yet, row by row
    (variant A, then B, each then judged), updating the progress after each, and
    finish it (``evaluation.finished``). Idempotent: an answered output is never
    asked again, and a finished evaluation is left alone. A call refused or failed
    fails its output with the reason; the others go on."""
    evaluation = await _begin(evaluation_id)
    if evaluation is None:
        return
    try:
        for row in evaluation.row_list:  # type: ignore[attr-defined]
            for variant in VARIANTS:
                await _answer(evaluation, row, variant)
                await _progress(evaluation_id)
    except Exception:
        logger.exception("evaluation %s stopped", evaluation_id)
        await _finish(evaluation_id, "The evaluation stopped on an internal error; see the logs.")
        raise
    await _finish(evaluation_id)
