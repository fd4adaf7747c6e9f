"""Chat pages and actions. Views parse input, call one service, render.

Another user's conversation or run answers 404. Every input is read with a form
(``conversations.forms``). Actions answer htmx requests with 204 (the WebSocket
push redraws the page) and plain form posts with a redirect. A refused action
(invalid input: 400; a state that does not allow it, such as a reply already
stopped: 409) answers htmx with the page's error box, swapped out of band, and a
plain post with its page drawn again, the error shown and what was typed kept;
it is logged once, as a warning.
"""

from __future__ import annotations

import json
from typing import Any

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseBadRequest
from django.shortcuts import redirect, render
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.utils.log import log_response
from django.utils.text import slugify
from django.views.decorators.http import require_GET, require_POST
from django_htmx.http import HttpResponseClientRedirect, reswap

from accounts.http import AuthenticatedHttpRequest
from accounts.selectors import usage_for_conversation
from conversations import attachments, exports, selectors, services
from conversations.attachments import attachments_typed
from conversations.events import error_fragment
from conversations.events import render as render_partial
from conversations.forms import (
    ArchiveForm,
    AttachmentUploadForm,
    CompareSettingsForm,
    ConversationSettingsForm,
    ConversationStartForm,
    EarlierForm,
    MessageForm,
    ModelPickForm,
    PinForm,
    PreferencesForm,
    RenameForm,
)
from conversations.metrics import metrics_allowed, metrics_render
from conversations.models import UserPreferences
from conversations.reformulation import ReformulationRefused, draft_reformulate
from knowledge.errors import DocumentRefused
from project.inbound import form_message, id_parse
from prompts.diffs import diff_table
from prompts.selectors import chain_choices

#: Refusals for the state a service found (HTTP 409); any other is bad input (400).
CONFLICTS = services.CONFLICTS


def _page(
    request: AuthenticatedHttpRequest,
    *,
    conversation=None,
    status: int = 200,
    **extra: Any,
) -> HttpResponse:
    show_archived = request.GET.get("archived") == "1" and conversation is None
    context = {
        "conversation": conversation,
        "page": selectors.conversation_page(user=request.user, archived=show_archived),
        "show_archived": show_archived,
        "model_configs": selectors.model_configs_enabled(),
        "agents": selectors.agent_list(user=request.user) if conversation is not None else [],
        "max_chars": settings.TOLLGATE_MAX_MESSAGE_CHARS,
        "attachment_limit": settings.TOLLGATE_MAX_ATTACHMENTS_PER_MESSAGE,
        **extra,
    }
    if conversation is not None:
        context["timeline"] = selectors.conversation_timeline(
            conversation=conversation, at=id_parse(request.GET.get("at", ""))
        )
        context["chains"] = chain_choices(user=request.user)
        context["usage"] = usage_for_conversation(
            user=request.user, conversation_id=conversation.pk
        )
    return render(request, "conversations/chat.html", context, status=status)


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
    form = EarlierForm(request.GET)
    if not form.is_valid():
        response = HttpResponseBadRequest(form_message(form))
        log_response("Bad 'before' on %s", request.path, response=response, request=request)
        return response
    timeline = selectors.conversation_timeline(
        conversation=conversation,
        before=form.cleaned_data["before"],
        context_cut=form.cleaned_data["cut"],
    )
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


def _shown(value: Any) -> Any:
    """Typed text as a page shows it again: NUL (which HTML cannot carry) as U+FFFD."""
    return value.replace("\x00", "\ufffd") if isinstance(value, str) else value


def _refuse(
    request: AuthenticatedHttpRequest,
    message: str,
    *,
    status: int = 400,
    conversation_id: int | None = None,
    typed: dict[str, Any] | None = None,
) -> HttpResponse:
    """Answer a refused action with ``message``, keeping what was typed.

    ``typed``: what the form held, for the page's context: ``typed_content`` (the
    message), ``typed_title``, ``typed_model``. htmx: the error box out of band
    (next to the composer, which keeps its text), no other swap. A plain post: the conversation's
    page (or the start page when ``conversation_id`` is ``None``) with the error
    and the typed values. Logged once, as a warning.
    """
    typed = {key: _shown(value) for key, value in (typed or {}).items()}
    if request.htmx:
        sending = "typed_content" in typed
        html = error_fragment(message, composer="refused" if sending else "")
        response = reswap(HttpResponse(html, status=status), "none")
    else:
        conversation = None
        if conversation_id is not None:
            conversation = selectors.conversation_get(
                user=request.user, conversation_id=conversation_id
            )
        response = _page(request, conversation=conversation, status=status, error=message, **typed)
    log_response(
        "Refused %s for user %s: %s",
        request.path,
        request.user.pk,
        message,
        response=response,
        request=request,
    )
    return response


def _refused(
    request: AuthenticatedHttpRequest,
    error: services.ConversationError,
    *,
    conversation_id: int | None = None,
    typed: dict[str, Any] | None = None,
) -> HttpResponse:
    """``_refuse`` for a service's refusal: 404 for ``NotFound``, 409 for a conflict."""
    if isinstance(error, services.NotFound):
        raise Http404(str(error))
    status = 409 if isinstance(error, CONFLICTS) else 400
    return _refuse(request, str(error), status=status, conversation_id=conversation_id, typed=typed)


def _done(request: AuthenticatedHttpRequest, url: str) -> HttpResponse:
    if request.htmx:
        return HttpResponse(status=204)
    return redirect(url)


@login_required
@require_POST
def conversation_create(request: AuthenticatedHttpRequest) -> HttpResponse:
    """New conversation with the picked model; with ``content``, also send it (both or neither)."""
    form = ConversationStartForm(request.POST)
    typed = {
        "typed_content": request.POST.get("content", ""),
        "typed_model": id_parse(request.POST.get("model_config", "")),
    }
    if not form.is_valid():
        return _refuse(request, form_message(form), typed=typed)
    try:
        conversation = services.conversation_start(
            user=request.user,
            model_config_id=form.cleaned_data["model_config"],
            content=form.cleaned_data["content"],
        )
    except services.ConversationError as error:
        return _refused(request, error, typed=typed)
    url = reverse("conversations:detail", args=[conversation.pk])
    if request.htmx:
        return HttpResponseClientRedirect(url)
    return redirect(url)


@login_required
@require_POST
def conversation_rename(request: AuthenticatedHttpRequest, conversation_id: int) -> HttpResponse:
    form = RenameForm(request.POST)
    typed = {"typed_title": request.POST.get("title", "")}
    if not form.is_valid():
        return _refuse(request, form_message(form), conversation_id=conversation_id, typed=typed)
    try:
        services.conversation_rename(
            user=request.user, conversation_id=conversation_id, title=form.cleaned_data["title"]
        )
    except services.ConversationError as error:
        return _refused(request, error, conversation_id=conversation_id, typed=typed)
    return _back(request, reverse("conversations:detail", args=[conversation_id]))


@login_required
@require_POST
def conversation_set_model(request: AuthenticatedHttpRequest, conversation_id: int) -> HttpResponse:
    form = ModelPickForm(request.POST)
    if not form.is_valid():
        return _refuse(request, form_message(form), conversation_id=conversation_id)
    try:
        services.conversation_set_model(
            user=request.user,
            conversation_id=conversation_id,
            model_config_id=form.cleaned_data["model_config"],
        )
    except services.ConversationError as error:
        return _refused(request, error, conversation_id=conversation_id)
    return redirect("conversations:detail", conversation_id)


@login_required
@require_POST
def conversation_archive(request: AuthenticatedHttpRequest, conversation_id: int) -> HttpResponse:
    form = ArchiveForm(request.POST)
    if not form.is_valid():
        return _refuse(request, form_message(form), conversation_id=conversation_id)
    archived = form.cleaned_data["archived"] != "0"
    try:
        services.conversation_archive(
            user=request.user, conversation_id=conversation_id, archived=archived
        )
    except services.ConversationError as error:
        return _refused(request, error, conversation_id=conversation_id)
    if archived:
        messages.success(request, "Conversation archived.")
        return _back(request, reverse("home"), leaving=conversation_id)
    return _back(request, reverse("conversations:detail", args=[conversation_id]))


@login_required
@require_POST
def conversation_delete(request: AuthenticatedHttpRequest, conversation_id: int) -> HttpResponse:
    try:
        services.conversation_delete(user=request.user, conversation_id=conversation_id)
    except services.ConversationError as error:
        return _refused(request, error, conversation_id=conversation_id)
    messages.success(request, "Conversation deleted.")
    return _back(request, reverse("home"), leaving=conversation_id)


@login_required
@require_POST
def conversation_pin(request: AuthenticatedHttpRequest, conversation_id: int) -> HttpResponse:
    """Pin (``pinned=1``) or unpin (``0``) a conversation: listed first in the sidebar."""
    form = PinForm(request.POST)
    if not form.is_valid():
        return _refuse(request, form_message(form), conversation_id=conversation_id)
    try:
        services.conversation_pin(
            user=request.user,
            conversation_id=conversation_id,
            pinned=form.cleaned_data["pinned"] != "0",
        )
    except services.ConversationError as error:
        return _refused(request, error, conversation_id=conversation_id)
    return _back(request, reverse("conversations:detail", args=[conversation_id]))


@login_required
@require_GET
def conversation_search(request: AuthenticatedHttpRequest) -> HttpResponse:
    """``GET /c/search?q=``: the user's conversations whose title or messages match,
    each opening at the message that matched (``selectors.conversation_search``). htmx
    (the sidebar's search box) gets the results' list; a plain request, the page."""
    query = request.GET.get("q", "")
    if "\x00" in query:
        return HttpResponseBadRequest("A search cannot hold a NUL character.")
    hits = selectors.conversation_search(user=request.user, query=query)
    context: dict[str, Any] = {"hits": hits, "query": query, "searched": bool(query.strip())}
    if request.htmx:
        return HttpResponse(render_partial("search-results", context))
    return _page(request, **context)


@login_required
@require_GET
def conversation_export(
    request: AuthenticatedHttpRequest, conversation_id: int, kind: str
) -> HttpResponse:
    """``GET /c/<id>/export.md`` (the branch shown, to read) or ``export.json``
    (everything, to keep or import: ``conversations.exports``), as a download."""
    conversation = selectors.conversation_get(user=request.user, conversation_id=conversation_id)
    name = slugify(str(conversation))[:60] or f"conversation-{conversation.pk}"
    if kind == "md":
        body = exports.conversation_markdown(conversation=conversation)
        response = HttpResponse(body, content_type="text/markdown; charset=utf-8")
    else:
        data = exports.conversation_export(conversation=conversation)
        body = json.dumps(data, indent=2, ensure_ascii=False, default=str)
        response = HttpResponse(body, content_type="application/json; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{name}.{kind}"'
    return response


@login_required
@require_POST
def conversation_import(request: AuthenticatedHttpRequest) -> HttpResponse:
    """``POST /c/import`` with ``file``, a JSON export: a new conversation, opened."""
    upload = request.FILES.get("file")
    if upload is None:
        return _refuse(request, "Choose a JSON export to import.")
    try:
        text = upload.read(exports.MAX_IMPORT_CHARS * 4 + 1).decode("utf-8")
    except UnicodeDecodeError:
        return _refuse(request, "This file cannot be imported: it is not UTF-8 text.")
    try:
        conversation = exports.conversation_import(user=request.user, text=text)
    except services.ConversationError as error:
        return _refused(request, error)
    messages.success(request, "Conversation imported.")
    return redirect("conversations:detail", conversation.pk)


@login_required
def preferences(request: AuthenticatedHttpRequest) -> HttpResponse:
    """``/settings/``: the user's defaults (model, system prompt), theme and send key,
    and links to their account (password, email addresses)."""
    current = selectors.preferences_get(user=request.user)
    error, status = "", 200
    if request.method == "POST":
        form = PreferencesForm(request.POST)
        if form.is_valid():
            data = form.cleaned_data
            try:
                services.preferences_set(
                    user=request.user,
                    default_model_id=data["default_model"],
                    default_system_prompt=data["default_system_prompt"],
                    theme=data["theme"],
                    send_key=data["send_key"],
                )
            except services.ConversationError as refused:
                error, status = str(refused), 400
            else:
                messages.success(request, "Settings saved.")
                return redirect("conversations:preferences")
        else:
            error, status = form_message(form), 400
    else:
        form = PreferencesForm(
            initial={
                "default_model": current.default_model_id,
                "default_system_prompt": current.default_system_prompt,
                "theme": current.theme,
                "send_key": current.send_key,
            }
        )
    context = {
        "form": form,
        "error": error,
        "model_configs": selectors.model_configs_enabled(),
        "themes": UserPreferences.Theme.choices,
        "send_keys": UserPreferences.SendKey.choices,
    }
    return render(request, "conversations/preferences.html", context, status=status)


def _back(
    request: AuthenticatedHttpRequest, default: str, *, leaving: int | None = None
) -> HttpResponse:
    """Where an action from the sidebar returns: the page it was taken on (``next``,
    a path of this site), unless that is the conversation it took away
    (``leaving``: archived from its own page, or deleted); else ``default``."""
    target = request.POST.get("next", "")
    safe = url_has_allowed_host_and_scheme(
        target, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    )
    gone = leaving is not None and target.startswith(
        reverse("conversations:detail", args=[leaving])
    )
    if request.htmx:
        return HttpResponse(status=204)
    return redirect(target if target.startswith("/") and safe and not gone else default)


@login_required
@require_POST
def message_send(request: AuthenticatedHttpRequest, conversation_id: int) -> HttpResponse:
    """HTTP twin of the WebSocket ``message.send`` (no-JS fallback)."""
    form = MessageForm(request.POST)
    typed = {
        "typed_content": request.POST.get("content", ""),
        "typed_compare": bool(request.POST.get("compare")),
        "typed_compare_models": [id_parse(v) for v in request.POST.getlist("compare_models")],
        "typed_attachments": attachments_typed(
            user=request.user, ids=[id_parse(v) for v in request.POST.getlist("attachments")]
        ),
    }
    if not form.is_valid():
        return _refuse(request, form_message(form), conversation_id=conversation_id, typed=typed)
    try:
        services.message_send(
            user=request.user,
            conversation_id=conversation_id,
            content=form.cleaned_data["content"],
            compare_model_ids=form.compare_ids(),
            chain_id=form.cleaned_data["chain_id"],
            attachment_ids=form.cleaned_data["attachments"],
        )
    except services.ConversationError as error:
        return _refused(request, error, conversation_id=conversation_id, typed=typed)
    return _done(request, reverse("conversations:detail", args=[conversation_id]))


def _attachment_refused(
    request: AuthenticatedHttpRequest, message: str, status: int
) -> HttpResponse:
    """A file the composer may not attach: the reason as plain text (``static/js/chat.js``
    shows it next to the composer, whose text and chips stay)."""
    response = HttpResponse(message, status=status, content_type="text/plain; charset=utf-8")
    log_response(
        "Refused %s for user %s: %s", request.path, request.user.pk, message,
        response=response, request=request,
    )  # fmt: skip
    return response


@login_required
@require_POST
def attachment_upload(request: AuthenticatedHttpRequest) -> HttpResponse:
    """One file for the composer, stored as the user's Knowledge document: its chip
    (``chat.html#attachment-chip``). Refused with its reason as text: 413 for a file
    over a limit (per file, the user's quota), 400 otherwise (no file, a type that
    cannot be read, the per-message limit)."""
    form = AttachmentUploadForm(request.POST, request.FILES)
    if not form.is_valid():
        return _attachment_refused(request, form_message(form), 400)
    try:
        document = attachments.attachment_upload(
            user=request.user,
            upload=form.cleaned_data["file"],
            attached=form.cleaned_data["attached"],
        )
    except DocumentRefused as error:
        return _attachment_refused(request, str(error), error.http_status)
    except services.ConversationError as error:
        return _attachment_refused(request, str(error), 400)
    return HttpResponse(render_partial("attachment-chip", {"d": document}))


@login_required
@require_GET
def attachment_status(request: AuthenticatedHttpRequest, document_id: int) -> HttpResponse:
    """A composer chip again (polled while its file is read). 404 for a document
    that is not the user's own."""
    try:
        document = attachments.attachment_get(user=request.user, document_id=document_id)
    except services.NotFound:
        raise Http404("No such file.") from None
    return HttpResponse(render_partial("attachment-chip", {"d": document}))


@login_required
@require_POST
def attachment_remove(request: AuthenticatedHttpRequest, document_id: int) -> HttpResponse:
    """A chip removed from the composer: its document is deleted unless a message
    was sent with it (204 either way). 404 for a document that is not the user's own."""
    try:
        attachments.attachment_discard(user=request.user, document_id=document_id)
    except services.NotFound:
        raise Http404("No such file.") from None
    return HttpResponse(status=204)


@login_required
@require_POST
def run_cancel(request: AuthenticatedHttpRequest, run_id: int) -> HttpResponse:
    """Stop a reply. 409 when it has already finished, failed or been stopped."""
    try:
        run = services.run_cancel(user=request.user, run_id=run_id)
    except services.ConversationError as error:
        return _refused(request, error)
    return _done(request, reverse("conversations:detail", args=[run.conversation_id]))


@login_required
@require_POST
def run_retry(request: AuthenticatedHttpRequest, run_id: int) -> HttpResponse:
    try:
        run = services.run_retry(user=request.user, run_id=run_id)
    except services.ConversationError as error:
        return _refused(request, error)
    return _done(request, reverse("conversations:detail", args=[run.conversation_id]))


@login_required
@require_POST
def run_regenerate(request: AuthenticatedHttpRequest, run_id: int) -> HttpResponse:
    """Answer a finished reply's message again, as an alternative shown in its place."""
    try:
        run = services.run_regenerate(user=request.user, run_id=run_id)
    except services.ConversationError as error:
        return _refused(request, error)
    return _done(request, reverse("conversations:detail", args=[run.conversation_id]))


@login_required
@require_POST
def branch_show(request: AuthenticatedHttpRequest, run_id: int) -> HttpResponse:
    """Show the branch through run ``run_id`` (a "< 1/2 >" switch)."""
    try:
        conversation = services.branch_show(user=request.user, run_id=run_id)
    except services.ConversationError as error:
        return _refused(request, error)
    return _done(request, reverse("conversations:detail", args=[conversation.pk]))


@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    """Prometheus metrics (``conversations.metrics``) for a scraper with the token or
    from an allowed address; 403 otherwise (also when neither is configured)."""
    if not metrics_allowed(
        authorization=request.headers.get("Authorization", ""),
        remote_addr=request.META.get("REMOTE_ADDR", ""),
    ):
        return HttpResponse("Forbidden: /metrics needs its token.\n", status=403,
                            content_type="text/plain")  # fmt: skip
    body, content_type = metrics_render()
    return HttpResponse(body, content_type=content_type)


@login_required
@require_GET
def run_timeline(request: AuthenticatedHttpRequest, run_id: int) -> HttpResponse:
    """A run's steps over time: model calls, waits for people, tool executions and
    parts in lanes (``selectors.run_timeline``). 404 for another user's run."""
    timeline = selectors.run_timeline(user=request.user, run_id=run_id)
    return render(request, "conversations/run_timeline.html", {"timeline": timeline})


@login_required
@require_POST
def compare_choose(request: AuthenticatedHttpRequest, run_id: int) -> HttpResponse:
    """Continue the conversation with one answer of a comparison, or its summary."""
    try:
        conversation = services.compare_choose(user=request.user, run_id=run_id)
    except services.ConversationError as error:
        return _refused(request, error)
    return _done(request, reverse("conversations:detail", args=[conversation.pk]))


@login_required
@require_POST
def message_edit(request: AuthenticatedHttpRequest, message_id: int) -> HttpResponse:
    """Send an edited version of a message, as a new branch from its place."""
    form = MessageForm(request.POST)
    if not form.is_valid():
        return _refuse(request, form_message(form))
    try:
        run = services.message_edit(
            user=request.user, message_id=message_id, content=form.cleaned_data["content"]
        )
    except services.ConversationError as error:
        return _refused(request, error)
    return _done(request, reverse("conversations:detail", args=[run.conversation_id]))


@login_required
def conversation_settings(request: AuthenticatedHttpRequest, conversation_id: int) -> HttpResponse:
    """The conversation's settings: system prompt, temperature, max output tokens.

    ``GET``: the form (the chat header's panel asks for it with htmx; a plain
    request gets it as a page), drawn for the values in the query string when
    there are any (the user picked another prompt: its labels and variables).
    ``POST``: save (``services.conversation_settings_set``), then back to the
    chat; a refusal draws the form again with the message and what was typed.
    """
    conversation = selectors.conversation_get(user=request.user, conversation_id=conversation_id)
    if request.method == "POST":
        form = ConversationSettingsForm(request.POST)
        if form.is_valid():
            label, version_id = form.pinned()
            data = form.cleaned_data
            try:
                _, note = services.conversation_settings_set(
                    user=request.user,
                    conversation_id=conversation.pk,
                    source=data["source"],
                    system_prompt_id=data["system_prompt"],
                    label=label,
                    version_id=version_id,
                    text=data["text"],
                    variables=form.variables(),
                    temperature=data["temperature"],
                    max_output_tokens=data["max_output_tokens"],
                )
            except services.ConversationError as error:
                return _settings_page(request, conversation, request.POST, str(error), 409)
            messages.success(request, note or "Settings saved; they apply from the next message.")
            url = reverse("conversations:detail", args=[conversation.pk])
            return HttpResponseClientRedirect(url) if request.htmx else redirect(url)
        return _settings_page(request, conversation, request.POST, form_message(form), 400)
    return _settings_page(request, conversation, request.GET, "", 200)


@login_required
@require_POST
def compare_settings(request: AuthenticatedHttpRequest, conversation_id: int) -> HttpResponse:
    """Save how Compare summaries are written in this conversation, then back to its
    settings page (a refusal: the page again with the message, 400 or 409)."""
    conversation = selectors.conversation_get(user=request.user, conversation_id=conversation_id)
    form = CompareSettingsForm(request.POST)
    if not form.is_valid():
        return _settings_page(
            request, conversation, None, "", 400, compare_error=form_message(form)
        )
    try:
        services.compare_settings_set(
            user=request.user,
            conversation_id=conversation.pk,
            model_id=form.cleaned_data["summary_model"],
            prompt_id=form.cleaned_data["summary_prompt"],
            shown=form.shown(),
        )
    except services.ConversationError as error:
        return _settings_page(request, conversation, None, "", 409, compare_error=str(error))
    messages.success(request, "Compare settings saved; they apply from the next Compare message.")
    return redirect(reverse("conversations:settings", args=[conversation.pk]))


def _settings_page(
    request: AuthenticatedHttpRequest,
    conversation: Any,
    data: Any,
    error: str,
    status: int,
    *,
    compare_error: str = "",
) -> HttpResponse:
    values = {key: _shown(value) for key, value in data.items()} if data else None
    context = {
        "conversation": conversation,
        "choices": selectors.settings_choices(
            conversation=conversation, user=request.user, data=values
        ),
        "error": error,
        "compare_error": compare_error,
        "model_configs": selectors.model_configs_enabled(),
    }
    template = "conversations/settings.html"
    if request.htmx:
        template += "#settings-form"
    response = render(request, template, context, status=status)
    if error:
        log_response(
            "Refused %s for user %s: %s", request.path, request.user.pk, error,
            response=response, request=request,
        )  # fmt: skip
    return response


@login_required
@require_POST
async def reformulate(request: AuthenticatedHttpRequest, conversation_id: int) -> HttpResponse:
    """The composer's draft (``content``) rewritten by the reformulation model,
    beside it as a diff, for the user to edit, accept into the composer, or
    discard (``conversations.reformulation``). Nothing is sent. Async: the model
    call takes seconds, and a sync view would hold the one thread Django runs
    them on. A refusal answers the panel with its message (400, 404 or 409)."""
    user = await request.auser()
    form = MessageForm(request.POST)
    status, error = 400, ""
    if form.is_valid():
        try:
            result = await draft_reformulate(
                user=user, conversation_id=conversation_id, draft=form.cleaned_data["content"]
            )
        except services.NotFound as refused:
            raise Http404(str(refused)) from None
        except services.ConversationError as refused:
            conflict = isinstance(refused, (*CONFLICTS, ReformulationRefused))
            status, error = (409 if conflict else 400), str(refused)
        else:
            context = {
                "result": result,
                "diff": diff_table(
                    result.draft, result.rewrite, before_title="Your draft", after_title="Rewrite"
                ),
            }
            return HttpResponse(render_to_string("conversations/reformulation.html", context))
    else:
        error = form_message(form)
    html = render_to_string("conversations/reformulation.html", {"error": error})
    response = HttpResponse(html, status=status)
    log_response(
        "Refused %s for user %s: %s", request.path, user.pk, error,
        response=response, request=request,
    )  # fmt: skip
    return response
