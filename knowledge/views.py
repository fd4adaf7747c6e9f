"""The Knowledge page, a document's page and its file. Views parse input, call one
service or selector, render.

A document or collection the user may not see answers 404, exactly as one that
does not exist. A refused upload draws the page again with the message, with 400
(413 for a file over a limit).
"""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import FileResponse, Http404, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_POST

from accounts.http import AuthenticatedHttpRequest
from knowledge import selectors, services
from knowledge.errors import DocumentNotFound, DocumentRefused, KnowledgeError
from knowledge.extraction import IMAGES, PDF
from knowledge.forms import CollectionForm, MemoryForm, RecallForm, ShareForm, UploadForm
from knowledge.memory import notes_recall
from tools.models import Note
from tools.selectors import notes_for_user
from tools.services import note_delete, note_edit


def _page(request: AuthenticatedHttpRequest, *, status: int = 200, **extra: Any) -> HttpResponse:
    context = {
        **selectors.knowledge_page(user=request.user),
        "upload_form": UploadForm(),
        "collection_form": CollectionForm(),
        "my_groups": list(request.user.groups.order_by("name")),
        **extra,
    }
    return render(request, "knowledge/index.html", context, status=status)


@login_required
@require_GET
def knowledge_index(request: AuthenticatedHttpRequest) -> HttpResponse:
    """Collections and documents the user may read, and the upload form."""
    return _page(request)


@login_required
@require_POST
def document_upload(request: AuthenticatedHttpRequest) -> HttpResponse:
    form = UploadForm(request.POST, request.FILES)
    if not form.is_valid():
        return _page(request, status=400, error="Choose a file to upload.")
    try:
        document = services.document_upload(
            user=request.user,
            upload=form.cleaned_data["file"],
            collection_id=form.cleaned_data["collection"],
        )
    except DocumentRefused as error:
        return _page(request, status=error.http_status, error=str(error))
    except DocumentNotFound:
        raise Http404("No such collection.") from None
    messages.success(request, f"{document.name} was uploaded; it is being read.")
    return redirect("knowledge:index")


@login_required
@require_POST
def collection_create(request: AuthenticatedHttpRequest) -> HttpResponse:
    form = CollectionForm(request.POST)
    if not form.is_valid():
        return _page(request, status=400, error="A collection needs a name.")
    try:
        services.collection_create(user=request.user, name=form.cleaned_data["name"])
    except KnowledgeError as error:
        return _page(request, status=400, error=str(error))
    return redirect("knowledge:index")


@login_required
@require_POST
def collection_share(request: AuthenticatedHttpRequest, collection_id: int) -> HttpResponse:
    choices = [(group.pk, group.name) for group in request.user.groups.all()]
    form = ShareForm(request.POST, group_choices=choices)
    if not form.is_valid():
        return _page(request, status=400, error="Share only with groups you are in.")
    try:
        services.collection_share(
            user=request.user, collection_id=collection_id, group_ids=form.cleaned_data["groups"]
        )
    except DocumentNotFound:
        raise Http404("No such collection.") from None
    except KnowledgeError as error:
        return _page(request, status=400, error=str(error))
    messages.success(request, "Sharing saved.")
    return redirect("knowledge:index")


@login_required
@require_POST
def collection_delete(request: AuthenticatedHttpRequest, collection_id: int) -> HttpResponse:
    try:
        services.collection_delete(user=request.user, collection_id=collection_id)
    except DocumentNotFound:
        raise Http404("No such collection.") from None
    messages.success(request, "Collection deleted; its documents are kept.")
    return redirect("knowledge:index")


def _document(request: AuthenticatedHttpRequest, document_id: int) -> Any:
    try:
        return selectors.document_get(user=request.user, document_id=document_id)
    except DocumentNotFound:
        raise Http404("No such document.") from None


@login_required
@require_GET
def document_detail(request: AuthenticatedHttpRequest, document_id: int) -> HttpResponse:
    """A document: its status, and its chunks by page or section; ``?chunk=`` marks
    the one a search result cites."""
    document = _document(request, document_id)
    raw = request.GET.get("chunk", "")
    context = {
        "document": document,
        "chunks": list(document.chunks.order_by("ordinal")),
        "cited": int(raw) if raw.isdigit() else None,
        "is_pdf": document.content_type == PDF,
        "is_image": document.content_type in IMAGES,
    }
    return render(request, "knowledge/document.html", context)


@login_required
@require_GET
def document_status(request: AuthenticatedHttpRequest, document_id: int) -> HttpResponse:
    """The document's row on the Knowledge page, polled by htmx while it is read."""
    document = _document(request, document_id)
    return render(
        request, "knowledge/index.html#document-row", {"document": document, "user": request.user}
    )


#: Types a browser may show inline; anything else is downloaded. HTML and other
#: text is served as plain text, never rendered: it is untrusted.
_INLINE = {PDF, *IMAGES}


@login_required
@require_GET
def document_file(request: AuthenticatedHttpRequest, document_id: int) -> FileResponse:
    document = _document(request, document_id)
    inline = document.content_type in _INLINE
    response = FileResponse(
        document.file.open("rb"),
        as_attachment=not inline,
        filename=document.name,
        content_type=document.content_type if inline else "application/octet-stream",
    )
    if document.content_type != PDF:
        response["Content-Security-Policy"] = "sandbox; default-src 'none'; img-src 'self'"
    return response


@login_required
@require_POST
def document_retry(request: AuthenticatedHttpRequest, document_id: int) -> HttpResponse:
    try:
        services.document_retry(user=request.user, document_id=document_id)
    except DocumentNotFound:
        raise Http404("No such document.") from None
    except KnowledgeError as error:
        return _page(request, status=409, error=str(error))
    return redirect("knowledge:index")


@login_required
@require_POST
def document_delete(request: AuthenticatedHttpRequest, document_id: int) -> HttpResponse:
    try:
        services.document_delete(user=request.user, document_id=document_id)
    except DocumentNotFound:
        raise Http404("No such document.") from None
    messages.success(request, "Document deleted.")
    return redirect("knowledge:index")


def _memory_page(
    request: AuthenticatedHttpRequest, *, status: int = 200, **extra: Any
) -> HttpResponse:
    recall = RecallForm(request.GET or None)
    recalled = None
    if recall.is_valid() and recall.cleaned_data["q"].strip():
        recalled = notes_recall(user=request.user, query=recall.cleaned_data["q"])
    context = {
        "notes": list(notes_for_user(user=request.user)),
        "recall_form": recall,
        "recalled": recalled,
        **extra,
    }
    return render(request, "knowledge/memory.html", context, status=status)


@login_required
@require_GET
def memory_index(request: AuthenticatedHttpRequest) -> HttpResponse:
    """What the user's chats remembered (the ``notes.*`` tools), with edit and delete;
    ``?q=`` recalls the notes most like a question in meaning."""
    return _memory_page(request)


@login_required
@require_POST
def memory_edit(request: AuthenticatedHttpRequest, note_id: int) -> HttpResponse:
    """Replace a note's value; a refused value draws the page again with the message
    and the text as typed (400). 404 for another user's note."""
    form = MemoryForm(request.POST)
    if not form.is_valid():
        return _memory_page(
            request, status=400, error=form.errors["value"][0], editing=note_id,
            typed=request.POST.get("value", ""),
        )  # fmt: skip
    try:
        note = note_edit(user=request.user, note_id=note_id, value=form.cleaned_data["value"])
    except Note.DoesNotExist:
        raise Http404("No such note.") from None
    messages.success(request, f"Saved “{note.key}”.")
    return redirect("knowledge:memory")


@login_required
@require_POST
def memory_delete(request: AuthenticatedHttpRequest, note_id: int) -> HttpResponse:
    """Forget a note. 404 for another user's note."""
    try:
        key = note_delete(user=request.user, note_id=note_id)
    except Note.DoesNotExist:
        raise Http404("No such note.") from None
    messages.success(request, f"Forgot “{key}”.")
    return redirect("knowledge:memory")
