"""Chat pages and actions. Views parse input, call one service, render.

Another user's conversation or run answers 404. Actions answer htmx requests
with 204 (the WebSocket push redraws the page) or an inline error fragment,
and plain form posts with a redirect (errors as flash messages).
"""

from __future__ import annotations

import logging

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpResponse, HttpResponseBadRequest
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST
from django_htmx.http import HttpResponseClientRedirect, retarget

from accounts.http import AuthenticatedHttpRequest
from conversations import selectors, services
from conversations.events import render as render_partial

logger = logging.getLogger(__name__)


def _page(request: AuthenticatedHttpRequest, *, conversation=None) -> HttpResponse:
    show_archived = request.GET.get("archived") == "1" and conversation is None
    context = {
        "conversation": conversation,
        "page": selectors.conversation_page(user=request.user, archived=show_archived),
        "show_archived": show_archived,
        "model_configs": selectors.model_configs_enabled(),
        "max_chars": settings.TOLLGATE_MAX_MESSAGE_CHARS,
    }
    if conversation is not None:
        context["timeline"] = selectors.conversation_timeline(conversation=conversation)
    return render(request, "conversations/chat.html", context)


@login_required
def home(request: AuthenticatedHttpRequest) -> HttpResponse:
    """The start page: conversation list and a box to start a new chat."""
    return _page(request)


@login_required
def conversation_detail(request: AuthenticatedHttpRequest, conversation_id: int) -> HttpResponse:
    conversation = selectors.conversation_get(user=request.user, conversation_id=conversation_id)
    return _page(request, conversation=conversation)


@login_required
@require_GET
def conversation_earlier(request: AuthenticatedHttpRequest, conversation_id: int) -> HttpResponse:
    """The exchanges before ``?before=<message id>``, for a chat page's "Earlier
    messages" button: the items and that page's own button, if any.

    Answers 404 for another user's conversation, 400 for a ``before`` that is
    not a number.
    """
    conversation = selectors.conversation_get(user=request.user, conversation_id=conversation_id)
    before = request.GET.get("before", "")
    if not before.isdigit():
        return HttpResponseBadRequest("'before' must be a message id.")
    timeline = selectors.conversation_timeline(conversation=conversation, before=int(before))
    return HttpResponse(
        render_partial("timeline", {"conversation": conversation, "timeline": timeline})
    )


@login_required
@require_GET
def conversation_list_more(request: AuthenticatedHttpRequest) -> HttpResponse:
    """The next page of the sidebar's list (``?after=<cursor>[&archived=1]``), for
    its "More conversations" button: the items and the next button, if any.

    Answers 400 for a cursor the list did not make.
    """
    show_archived = request.GET.get("archived") == "1"
    try:
        page = selectors.conversation_page(
            user=request.user, archived=show_archived, after=request.GET.get("after", "")
        )
    except selectors.BadCursor as error:
        return HttpResponseBadRequest(str(error))
    return HttpResponse(
        render_partial("conversation-page", {"page": page, "show_archived": show_archived})
    )


def _error(
    request: AuthenticatedHttpRequest, error: services.ConversationError, fallback: str
) -> HttpResponse:
    if isinstance(error, services.NotFound):
        raise Http404(str(error))
    logger.info("rejected %s for user %s: %s", request.path, request.user.pk, error)
    if request.htmx:
        response = HttpResponse(render_partial("chat-errors", {"error": str(error)}))
        return retarget(response, "#chat-errors")
    messages.error(request, str(error))
    return redirect(fallback)


def _done(request: AuthenticatedHttpRequest, url: str) -> HttpResponse:
    if request.htmx:
        return HttpResponse(status=204)
    return redirect(url)


def _int_or_none(value: str | None) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except ValueError:
        return -1  # an id that matches nothing: "not available"


@login_required
@require_POST
def conversation_create(request: AuthenticatedHttpRequest) -> HttpResponse:
    """New conversation with the picked model; with ``content``, also send it."""
    content = request.POST.get("content", "")
    try:
        conversation = services.conversation_create(
            user=request.user, model_config_id=_int_or_none(request.POST.get("model_config"))
        )
        url = reverse("conversations:detail", args=[conversation.pk])
        if content.strip():
            services.message_send(
                user=request.user, conversation_id=conversation.pk, content=content
            )
    except services.ConversationError as error:
        return _error(request, error, reverse("home"))
    if request.htmx:
        return HttpResponseClientRedirect(url)
    return redirect(url)


@login_required
@require_POST
def conversation_rename(request: AuthenticatedHttpRequest, conversation_id: int) -> HttpResponse:
    url = reverse("conversations:detail", args=[conversation_id])
    try:
        services.conversation_rename(
            user=request.user, conversation_id=conversation_id, title=request.POST.get("title", "")
        )
    except services.ConversationError as error:
        return _error(request, error, url)
    return redirect(url)


@login_required
@require_POST
def conversation_set_model(request: AuthenticatedHttpRequest, conversation_id: int) -> HttpResponse:
    url = reverse("conversations:detail", args=[conversation_id])
    try:
        services.conversation_set_model(
            user=request.user,
            conversation_id=conversation_id,
            model_config_id=_int_or_none(request.POST.get("model_config")) or -1,
        )
    except services.ConversationError as error:
        return _error(request, error, url)
    return redirect(url)


@login_required
@require_POST
def conversation_archive(request: AuthenticatedHttpRequest, conversation_id: int) -> HttpResponse:
    archived = request.POST.get("archived", "1") == "1"
    try:
        services.conversation_archive(
            user=request.user, conversation_id=conversation_id, archived=archived
        )
    except services.ConversationError as error:
        return _error(request, error, reverse("home"))
    if archived:
        messages.success(request, "Conversation archived.")
        return redirect("home")
    return redirect("conversations:detail", conversation_id)


@login_required
@require_POST
def conversation_delete(request: AuthenticatedHttpRequest, conversation_id: int) -> HttpResponse:
    try:
        services.conversation_delete(user=request.user, conversation_id=conversation_id)
    except services.ConversationError as error:
        return _error(request, error, reverse("home"))
    messages.success(request, "Conversation deleted.")
    return redirect("home")


@login_required
@require_POST
def message_send(request: AuthenticatedHttpRequest, conversation_id: int) -> HttpResponse:
    """HTTP twin of the WebSocket ``message.send`` (no-JS fallback)."""
    url = reverse("conversations:detail", args=[conversation_id])
    try:
        services.message_send(
            user=request.user,
            conversation_id=conversation_id,
            content=request.POST.get("content", ""),
        )
    except services.ConversationError as error:
        return _error(request, error, url)
    return _done(request, url)


@login_required
@require_POST
def run_cancel(request: AuthenticatedHttpRequest, run_id: int) -> HttpResponse:
    try:
        run = services.run_cancel(user=request.user, run_id=run_id)
    except services.ConversationError as error:
        return _error(request, error, reverse("home"))
    return _done(request, reverse("conversations:detail", args=[run.conversation_id]))


@login_required
@require_POST
def run_retry(request: AuthenticatedHttpRequest, run_id: int) -> HttpResponse:
    try:
        run = services.run_retry(user=request.user, run_id=run_id)
    except services.ConversationError as error:
        return _error(request, error, reverse("home"))
    return _done(request, reverse("conversations:detail", args=[run.conversation_id]))
