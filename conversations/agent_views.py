"""The agents page: a user's agents and the ones shared with them; create and edit
their own (``services.agent_save``). Another user's private agent is a 404."""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.http import Http404, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods, require_POST

from accounts.http import AuthenticatedHttpRequest
from conversations import selectors, services
from conversations.forms import AgentForm, IdField
from conversations.models import AgentProfile
from project.inbound import form_message


@login_required
def agent_list(request: AuthenticatedHttpRequest) -> HttpResponse:
    return render(
        request, "conversations/agents.html", {"agents": selectors.agent_list(user=request.user)}
    )


def _initial(agent: AgentProfile) -> dict[str, Any]:
    fields = {name: getattr(agent, name) for name in services.AGENT_FIELDS}
    return {
        **fields,
        "handoff_targets": list(agent.handoff_targets.all()),
        "agent_tools": list(agent.agent_tools.all()),
        "groups": [g.pk for g in agent.groups.all()],
    }


@login_required
@require_http_methods(["GET", "POST"])
def agent_edit(request: AuthenticatedHttpRequest, agent_id: int | None = None) -> HttpResponse:
    agent = (
        None if agent_id is None else selectors.agent_get_own(user=request.user, agent_id=agent_id)
    )
    if request.method == "GET":
        initial = _initial(agent) if agent is not None else None
        form = AgentForm(user=request.user, agent=agent, initial=initial)
        return render(request, "conversations/agent_form.html", {"form": form, "agent": agent})
    form = AgentForm(request.POST, user=request.user, agent=agent)
    error = ""
    if form.is_valid():
        try:
            saved = services.agent_save(
                user=request.user, agent_id=agent_id, data=form.cleaned_data
            )
        except services.NotFound as refused:
            raise Http404(str(refused)) from None
        except services.ConversationError as refused:
            error = str(refused)
        else:
            messages.success(request, f"Agent {saved.name} saved.")
            return redirect("conversations:agents")
    else:
        error = form_message(form)
    context = {"form": form, "agent": agent, "error": error}  # the form keeps what was typed
    return render(request, "conversations/agent_form.html", context, status=400)


@login_required
@require_POST
def conversation_set_agent(request: AuthenticatedHttpRequest, conversation_id: int) -> HttpResponse:
    try:
        agent_id = IdField(required=False).clean(request.POST.get("agent", ""))
    except ValidationError:
        raise Http404("Agent not found.") from None
    try:
        services.conversation_set_agent(
            user=request.user, conversation_id=conversation_id, agent_id=agent_id
        )
    except services.NotFound as refused:
        raise Http404(str(refused)) from None
    return redirect("conversations:detail", conversation_id)
