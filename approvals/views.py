"""HTTP views of approvals (htmx): the list, one card, and a decision."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import Http404, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET, require_POST

from accounts.http import AuthenticatedHttpRequest, client_ip
from approvals.forms import ApprovalFilterForm, DecisionForm
from approvals.models import ApprovalRequest
from approvals.selectors import (
    approval_can_vote,
    approval_get_visible,
    approval_tools_for_user,
    approvals_for_user,
)
from approvals.services import (
    ApprovalAlreadyVoted,
    ApprovalArgumentsInvalid,
    ApprovalArgumentsMismatch,
    ApprovalBudgetExceeded,
    ApprovalEditRefused,
    ApprovalError,
    ApprovalForbidden,
    ApprovalNotFound,
    ApprovalNotPending,
    approval_decide_from_form,
    arguments_validate,
    json_diff,
)

PAGE_SIZE = 25


def _group_ids(user: Any) -> set[int]:
    return set(user.groups.values_list("pk", flat=True))


@login_required
@require_GET
def approval_list(request: AuthenticatedHttpRequest) -> HttpResponse:
    """GET /approvals/: the user's approvals and those they approve, filterable by status/tool.

    Filters that are not valid (an unknown status, a tool name with a NUL
    character) answer 400: the page unfiltered, with a message saying why.
    """
    filters = ApprovalFilterForm(request.GET or None)
    status = tool = None
    filter_error = ""
    if filters.is_valid():
        status = filters.cleaned_data["status"] or None
        tool = filters.cleaned_data["tool"] or None
    elif filters.is_bound:
        filter_error = "These filters cannot be used: " + _form_errors(filters)
    page = Paginator(
        approvals_for_user(user=request.user, status=status, tool=tool), PAGE_SIZE
    ).get_page(request.GET.get("page"))
    group_ids = _group_ids(request.user)
    items = [
        {
            "approval": a,
            "can_vote": approval_can_vote(user=request.user, approval=a, group_ids=group_ids),
        }
        for a in page.object_list
    ]
    return render(
        request,
        "approvals/panel.html",
        {
            "items": items,
            "viewer": request.user,
            "page": page,
            "filters": filters,
            "tools": approval_tools_for_user(user=request.user),
            "status_choices": ApprovalRequest.Status.choices,
            "selected_status": status or "",
            "selected_tool": tool or "",
            "filter_error": filter_error,
            # Where new requests may arrive live (they are pending, of any tool).
            "live": page.number == 1 and status in (None, "pending") and tool is None,
        },
        status=400 if filter_error else 200,
    )


def _form_errors(form: forms.Form) -> str:
    """A form's errors as one line: ``"status: Select a valid choice. …"``."""
    return "; ".join(
        f"{'' if field == '__all__' else field + ': '}{' '.join(str(msg) for msg in msgs)}"
        for field, msgs in form.errors.items()
    )


def _card_response(
    request: AuthenticatedHttpRequest,
    approval: ApprovalRequest,
    *,
    status: int = 200,
    error: str = "",
    form: DecisionForm | None = None,
    preview_diff: list | None = None,
    preview_errors: list[str] | None = None,
) -> HttpResponse:
    context = {
        "approval": approval,
        "can_vote": approval_can_vote(user=request.user, approval=approval),
        "viewer": request.user,
        "error": error,
        "form": form,
        "preview_diff": preview_diff,
        "preview_errors": preview_errors,
    }
    if request.htmx:
        # The card only. The badge's new count reaches every page of the decider by
        # the decision's push (approvals.events: the decider is always a recipient);
        # out of band here it was lost whenever that push had already replaced the
        # card, whose page htmx then looked in (htmx:oobErrorNoTarget).
        return render(request, "approvals/panel.html#approval-card", context, status=status)
    context["single"] = True
    return render(request, "approvals/panel.html", context, status=status)


def _visible_or_404(request: AuthenticatedHttpRequest, pk: int) -> ApprovalRequest:
    approval = approval_get_visible(user=request.user, approval_id=pk)
    if approval is None:
        raise Http404("No such approval.")
    return approval


@login_required
@require_GET
def approval_detail(request: AuthenticatedHttpRequest, pk: int) -> HttpResponse:
    """GET /approvals/<id>/: one card (a fragment for htmx, a page otherwise)."""
    return _card_response(request, _visible_or_404(request, pk))


@login_required
@require_POST
def approval_decide_view(request: AuthenticatedHttpRequest, pk: int) -> HttpResponse:
    """POST /approvals/<id>/decide: approve, deny, edit-and-approve, or preview an edit.

    Answers the re-rendered card: 200 on success, 400 for invalid input or
    edits, 403 (audited) when the user may see but not decide it (the requester
    under four eyes too), 404 when they may not see it, 409 when it is no longer
    pending, the user has already voted, the arguments hash is not the current
    one, an edit comes after an approval, or approving would pass a budget of
    the requester's (the card says why; the request stays pending).
    """
    approval = _visible_or_404(request, pk)
    form = DecisionForm(request.POST, approval=approval)
    if not form.is_valid():
        errors = _form_errors(form)
        return _card_response(request, approval, status=400, error=errors, form=form)
    if form.cleaned_data["decision"] == "preview":
        edited = form.cleaned_data["edited"]
        problems = arguments_validate(schema=approval.arguments_schema or {}, arguments=edited)
        return _card_response(
            request,
            approval,
            status=400 if problems else 200,
            form=form,
            preview_diff=json_diff(approval.arguments, edited),
            preview_errors=problems,
        )
    try:
        approval = approval_decide_from_form(form=form, user=request.user, ip=client_ip(request))
    except ApprovalNotFound as exc:
        raise Http404(str(exc)) from exc
    except ApprovalForbidden as exc:
        return _card_response(request, _visible_or_404(request, pk), status=403, error=str(exc))
    except (
        ApprovalNotPending,
        ApprovalAlreadyVoted,
        ApprovalArgumentsMismatch,
        ApprovalEditRefused,
        ApprovalBudgetExceeded,
    ) as exc:
        return _card_response(request, _visible_or_404(request, pk), status=409, error=str(exc))
    except ApprovalArgumentsInvalid as exc:
        return _card_response(
            request,
            _visible_or_404(request, pk),
            status=400,
            error=str(exc),
            form=form,
            preview_errors=exc.errors,
        )
    except ApprovalError as exc:  # pragma: no cover - every subclass is handled above
        return _card_response(request, _visible_or_404(request, pk), status=400, error=str(exc))
    return _card_response(request, _visible_or_404(request, approval.pk))
