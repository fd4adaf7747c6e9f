"""The A/B evaluation pages of a prompt (``/evaluations/…``). Views parse input, call
one service or selector, render.

A user reaches only their own evaluations, of prompts they may see; anything
else answers 404. A refused creation draws the form again with the message and
what was typed (400); a refused start draws the evaluation with the reason
(409). While the calls run, the page's body polls its partial every second
(``evaluation-body``), which stops polling once the evaluation is over.
"""

from __future__ import annotations

from typing import Any

from asgiref.sync import sync_to_async
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpResponse
from django.shortcuts import redirect, render
from django.utils.log import log_response
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from accounts.http import AuthenticatedHttpRequest
from accounts.selectors import budget_statuses
from conversations.dispatch import gateway_ready
from conversations.evaluations import EvaluationRefused, evaluation_quote, evaluation_start
from project.inbound import form_message
from prompts import selectors as prompt_selectors
from prompts.errors import PromptError, PromptNotFound
from prompts.evaluations import (
    MAX_ROWS,
    dataset_columns,
    evaluation_create,
    evaluation_mark,
    evaluation_results,
    evaluations_of,
)
from prompts.forms import EvaluationForm
from prompts.models import Evaluation, EvaluationRow

TEMPLATE = "conversations/evaluation.html"


def _refused(request: Any, response: HttpResponse, message: str) -> HttpResponse:
    log_response(
        "Refused %s for user %s: %s",
        request.path,
        request.user.pk,
        message,
        response=response,
        request=request,
    )
    return response


def _form(user: Any, prompt_id: int, data: Any = None, files: Any = None) -> tuple[Any, Any]:
    try:
        detail = prompt_selectors.prompt_detail(user=user, prompt_id=prompt_id)
    except PromptNotFound:
        raise Http404("Prompt not found.") from None
    numbers = [v.number for v in detail.versions]
    judges = [
        (p.pk, f"{p.name} (/{p.command})")
        for p in prompt_selectors.prompt_list(user=user)
        if p.pk != prompt_id
    ]
    initial = {
        "version_a": detail.versions[1].number if len(numbers) > 1 else numbers[0],
        "version_b": numbers[0],
    }
    form = EvaluationForm(data, files, versions=numbers, judges=judges, initial=initial)
    return detail, form


@login_required
@require_http_methods(["GET", "POST"])
def evaluation_new(request: AuthenticatedHttpRequest, prompt_id: int) -> HttpResponse:
    """The form of a new evaluation of prompt ``prompt_id``; a valid post makes it (not
    started) and shows it with its estimate."""
    if request.method == "GET":
        detail, form = _form(request.user, prompt_id)
    else:
        detail, form = _form(request.user, prompt_id, request.POST, request.FILES)
        error = ""
        if form.is_valid():
            data = form.cleaned_data
            try:
                evaluation = evaluation_create(
                    user=request.user,
                    prompt_id=prompt_id,
                    version_a=data["version_a"],
                    version_b=data["version_b"],
                    model_a=data["model_a"],
                    model_b=data["model_b"],
                    dataset=data["dataset"],
                    judge_prompt_id=data["judge"],
                )
            except PromptNotFound:
                raise Http404("Prompt not found.") from None
            except PromptError as refused:
                error = str(refused)
            else:
                return redirect("conversations:evaluation", evaluation_id=evaluation.pk)
        else:
            error = form_message(form)
        context = _new_context(request, detail, form, error)
        response = render(request, "conversations/evaluation_new.html", context, status=400)
        return _refused(request, response, error)
    return render(request, "conversations/evaluation_new.html", _new_context(request, detail, form))


def _new_context(request: Any, detail: Any, form: Any, error: str = "") -> dict[str, Any]:
    return {
        "prompt": detail.prompt,
        "form": form,
        "error": error,
        "columns": dataset_columns(prompt=detail.prompt, versions=detail.versions),
        "max_rows": MAX_ROWS,
        "evaluations": evaluations_of(user=request.user, prompt=detail.prompt),
    }


def _context(
    request: Any, evaluation_id: int, error: str = "", *, quote: bool = True
) -> dict[str, Any]:
    try:
        results = evaluation_results(user=request.user, evaluation_id=evaluation_id)
    except PromptNotFound:
        raise Http404("Evaluation not found.") from None
    evaluation = results.evaluation
    context: dict[str, Any] = {
        "results": results,
        "evaluation": evaluation,
        "error": error,
        "choices": [("a", "A"), ("b", "B"), ("tie", "Tie")],
    }
    if quote and evaluation.status == Evaluation.Status.DRAFT:
        estimate, refusal = evaluation_quote(user=request.user, evaluation=evaluation)
        context.update(
            estimate=estimate, refusal=refusal, budgets=budget_statuses(user=request.user)
        )
    return context


@login_required
@require_GET
async def evaluation_detail(request: AuthenticatedHttpRequest, evaluation_id: int) -> HttpResponse:
    """An evaluation: its estimate and Start button before it starts, then its
    progress, the outputs side by side per row, and the summary per variant.
    Async only to wait for the model gateway's import (the estimate prices models
    from litellm's map) away from the thread sync views share."""
    await request.auser()
    await gateway_ready()
    return await sync_to_async(_detail)(request, evaluation_id)


def _detail(request: Any, evaluation_id: int) -> HttpResponse:
    context = _context(request, evaluation_id)
    if request.htmx:
        return render(request, f"{TEMPLATE}#evaluation-body", context)
    return render(request, TEMPLATE, context)


@login_required
@require_POST
async def evaluation_run(request: AuthenticatedHttpRequest, evaluation_id: int) -> HttpResponse:
    """Start the evaluation's calls (``evaluation_start``); a refusal (over budget) is
    shown on its page with 409, and no call is made."""
    await request.auser()
    await gateway_ready()
    return await sync_to_async(_run)(request, evaluation_id)


def _run(request: Any, evaluation_id: int) -> HttpResponse:
    try:
        evaluation_start(user=request.user, evaluation_id=evaluation_id)
    except PromptNotFound:
        raise Http404("Evaluation not found.") from None
    except EvaluationRefused as refused:
        response = render(
            request, TEMPLATE, _context(request, evaluation_id, str(refused)), status=409
        )
        return _refused(request, response, str(refused))
    return redirect("conversations:evaluation", evaluation_id=evaluation_id)


@login_required
@require_POST
def evaluation_prefer(
    request: AuthenticatedHttpRequest, evaluation_id: int, position: int
) -> HttpResponse:
    """Mark the better output of row ``position`` (``choice``: a, b, tie, or empty);
    answers htmx with the evaluation's body (the row and the summary redrawn)."""
    choice = request.POST.get("choice", "")
    status, error = 200, ""
    if choice not in EvaluationRow.Choice.values:
        status, error = 400, "Mark A, B or a tie."
    else:
        try:
            evaluation_mark(
                user=request.user, evaluation_id=evaluation_id, position=position, choice=choice
            )
        except PromptNotFound:
            raise Http404("Evaluation not found.") from None
        except PromptError as refused:
            status, error = 409, str(refused)
    if not request.htmx and not error:
        return redirect("conversations:evaluation", evaluation_id=evaluation_id)
    name = f"{TEMPLATE}#evaluation-body" if request.htmx else TEMPLATE
    context = _context(request, evaluation_id, error, quote=False)
    response = render(request, name, context, status=status)
    return _refused(request, response, error) if error else response
