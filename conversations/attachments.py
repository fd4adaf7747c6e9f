"""Files attached to chat messages: each a Knowledge document of its sender.

The composer uploads each file on its own (:func:`attachment_upload`: the
per-message limit, then ``knowledge.services.document_upload``, whose limits per
file and per user and type checks are the only ones), shows it as a chip while
it is read, and sends the documents' ids with the message. ``services.message_send``
checks them (:func:`attachments_for_send`: at most
``TOLLGATE_MAX_ATTACHMENTS_PER_MESSAGE``, each the sender's own; an image only
to a model that accepts images, :func:`attachments_images_check`) before
anything is stored, and links them (:func:`attachments_link`, the
``MessageAttachment`` rows, and what the page shows of them in the message's
``metadata["attachments"]``).

What the model reads (:func:`attachments_context`, called once, from
``engine.history_with_ids``): after the message's text, the names of its files;
the passages of its text files that best match it (``knowledge.selectors.chunks_search``
restricted to them, formatted by ``knowledge.tool.hits_text``: numbered, cited,
marked untrusted) when ``TOLLGATE_KNOWLEDGE_AUTO_RETRIEVE`` is on; a line for a
file still being read or that failed; and its images as image parts, for a
model that accepts images. A run's first model call waits up to
``TOLLGATE_KNOWLEDGE_ATTACHMENT_WAIT_SECONDS`` from the message for its files
to be read (:func:`attachments_wait_until`, the engine's wait), then says which
are not.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.core.files.uploadedfile import UploadedFile
from django.db.models import Min

from conversations.errors import ConversationError, NotFound
from conversations.models import Message, MessageAttachment, ModelConfig
from knowledge.errors import DocumentNotFound, EmbeddingFailed
from knowledge.extraction import IMAGES, PDF
from knowledge.models import Document
from knowledge.selectors import chunks_search
from knowledge.services import document_delete, document_upload
from knowledge.tool import hits_sources, hits_text

logger = logging.getLogger(__name__)

Status = Document.Status
#: What the model reads after a message's text, before its files' names.
ATTACHED_HEAD = "Files attached to this message:"
#: How a type is named to the model and on a chip.
TYPE_NAMES = {
    PDF: "PDF",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document": "Word document",
    "text/plain": "text",
    "text/markdown": "Markdown",
    "text/html": "HTML",
    "text/csv": "CSV",
    "image/png": "PNG image",
    "image/jpeg": "JPEG image",
    "image/webp": "WebP image",
}


class AttachmentRefused(ConversationError):
    """Files that cannot go with a message (too many, not the sender's, an image to
    a model that does not read images): nothing is stored."""


def attachment_limit() -> int:
    return settings.TOLLGATE_MAX_ATTACHMENTS_PER_MESSAGE


def _over_limit(count: int) -> AttachmentRefused:
    limit = attachment_limit()
    return AttachmentRefused(
        f"A message can carry at most {limit} file{'s' if limit != 1 else ''} "
        f"({count} attached). Remove {count - limit} to send it."
    )


def attachment_upload(*, user: Any, upload: UploadedFile, attached: Sequence[int]) -> Document:
    """Store ``upload`` as a document of ``user`` for the composer, which already
    holds the documents ``attached``. Raises, with nothing stored,
    ``AttachmentRefused`` when one more file would pass the per-message limit, and
    what ``knowledge.services.document_upload`` raises (a file over its limits, a
    type it cannot read)."""
    limit = attachment_limit()
    if len(set(attached)) + 1 > limit:
        raise AttachmentRefused(
            f"{upload.name}: a message can carry at most {limit} file"
            f"{'s' if limit != 1 else ''}. Remove one to attach another."
        )
    return document_upload(user=user, upload=upload)


def attachment_get(*, user: Any, document_id: int) -> Document:
    """``user``'s own document ``document_id`` (a chip in their composer); ``NotFound``
    otherwise (another user's, a shared one, none)."""
    document = Document.objects.filter(pk=document_id, owner=user).first()
    if document is None:
        raise NotFound("No such file.")
    return document


def attachments_typed(*, user: Any, ids: Sequence[int | None]) -> list[Document]:
    """The documents of ``ids`` (a composer's chips, sent back) that are ``user``'s own,
    in that order, for a refused send's page to show again; others are left out."""
    wanted = [pk for pk in dict.fromkeys(ids) if pk is not None][:50]
    if not wanted or user is None or not user.is_authenticated:
        return []
    found = Document.objects.filter(owner=user, pk__in=wanted).in_bulk()
    return [found[pk] for pk in wanted if pk in found]


def attachment_discard(*, user: Any, document_id: int) -> bool:
    """A chip removed from the composer: its document is deleted when no message
    was sent with it (it was uploaded for this draft), else kept. Whether it was
    deleted. Raises ``NotFound`` for a document that is not ``user``'s."""
    attachment_get(user=user, document_id=document_id)
    if MessageAttachment.objects.filter(document_id=document_id).exists():
        return False
    try:
        document_delete(user=user, document_id=document_id)
    except DocumentNotFound:
        raise NotFound("No such file.") from None
    return True


def attachments_for_send(*, user: Any, document_ids: Sequence[int]) -> list[Document]:
    """The documents to send with a message of ``user``, in the order given (each
    once). Raises ``AttachmentRefused`` past the per-message limit, or when one is
    not ``user``'s own (another user's, one shared with them, a deleted one: the
    same answer for each)."""
    ids = list(dict.fromkeys(document_ids))
    if not ids:
        return []
    if len(ids) > attachment_limit():
        raise _over_limit(len(ids))
    found = Document.objects.filter(owner=user, pk__in=ids).in_bulk()
    if len(found) != len(ids):
        raise AttachmentRefused(
            "A file attached is not one of yours, or was deleted. Nothing was sent: "
            "remove it and attach it again."
        )
    return [found[pk] for pk in ids]


def attachments_images_check(documents: Iterable[Document], configs: Iterable[ModelConfig]) -> None:
    """Refuse (``AttachmentRefused``) images for a model of ``configs`` that does not
    accept images (``ModelConfig.accepts_images``), naming it: before any call."""
    image = next((d for d in documents if d.content_type in IMAGES), None)
    if image is None:
        return
    for config in configs:
        if not config.accepts_images:
            raise AttachmentRefused(
                f"{config.name} does not accept images. Nothing was sent: remove "
                f"{image.name} or pick a model that reads images."
            )


def attachments_shown(documents: Sequence[Document]) -> list[dict[str, Any]]:
    """What a sent message shows of its files (kept in its metadata)."""
    return [
        {"id": d.pk, "name": d.name, "type": d.content_type, "image": d.content_type in IMAGES}
        for d in documents
    ]


def attachments_link(message: Message, documents: Sequence[Document]) -> None:
    """Link ``documents`` to ``message``, in order (its metadata already shows them)."""
    MessageAttachment.objects.bulk_create(
        MessageAttachment(message=message, document=document, position=position)
        for position, document in enumerate(documents)
    )


def attachments_of(message_id: int) -> list[Document]:
    """The documents sent with message ``message_id``, in order."""
    return [
        link.document
        for link in MessageAttachment.objects.filter(message_id=message_id).select_related(
            "document"
        )
    ]


# -- the engine: wait, then what the model reads ---------------------------------------


def attachments_wait_until(*, message_id: int | None) -> datetime | None:
    """Until when a first model call answering message ``message_id`` waits for its
    files to be read: ``None`` when none is pending or being read (one query)."""
    if message_id is None:
        return None
    sent = MessageAttachment.objects.filter(
        message_id=message_id, document__status__in=(Status.PENDING, Status.INGESTING)
    ).aggregate(sent=Min("message__created_at"))["sent"]
    if sent is None:
        return None
    return sent + timedelta(seconds=settings.TOLLGATE_KNOWLEDGE_ATTACHMENT_WAIT_SECONDS)


def attachments_being_read(*, message_id: int) -> bool:
    """Whether a file of message ``message_id`` is still pending or being read."""
    return MessageAttachment.objects.filter(
        message_id=message_id, document__status__in=(Status.PENDING, Status.INGESTING)
    ).exists()


@dataclass
class Addition:
    """What the model reads of one message's files: ``text`` after the message's
    own, ``images`` (image parts), ``sources`` (the citations of its passages)."""

    text: str
    images: list[dict[str, Any]] = field(default_factory=list)
    sources: list[dict[str, Any]] = field(default_factory=list)


def _described(document: Document) -> str:
    kind = TYPE_NAMES.get(document.content_type, document.content_type)
    if document.pages:
        kind += f", {document.pages} page{'s' if document.pages != 1 else ''}"
    return f"{document.name} ({kind})"


def _image_part(document: Document) -> dict[str, Any] | None:
    try:
        with document.file.open("rb") as handle:
            data = handle.read()
    except OSError:
        logger.warning("attached image %s could not be read", document.pk, exc_info=True)
        return None
    encoded = base64.b64encode(data).decode("ascii")
    return {
        "type": "image_url",
        "image_url": {"url": f"data:{document.content_type};base64,{encoded}"},
    }


def _addition(
    owner: Any, text: str, documents: list[Document], *, accepts_images: bool
) -> Addition:
    lines = [f"{ATTACHED_HEAD} {', '.join(_described(d) for d in documents)}."]
    images: list[dict[str, Any]] = []
    searchable: list[int] = []
    notes: list[str] = []
    for document in documents:
        if document.content_type in IMAGES:
            part = _image_part(document) if accepts_images else None
            if part is not None:
                images.append(part)
            else:
                notes.append(f"{document.name} is an image, and this model does not read images.")
        elif document.status == Status.READY:
            searchable.append(document.pk)
        elif document.status == Status.FAILED:
            notes.append(
                f"{document.name} could not be read ({document.error or 'no reason given'}): "
                "its text is not included."
            )
        else:
            notes.append(
                f"{document.name} is still being read ({document.progress}% done): its text "
                "is not included here."
            )
    sources: list[dict[str, Any]] = []
    if searchable and settings.TOLLGATE_KNOWLEDGE_AUTO_RETRIEVE:
        try:
            hits = chunks_search(
                user=owner,
                query=text,
                limit=settings.TOLLGATE_KNOWLEDGE_AUTO_RETRIEVE_PASSAGES,
                document_ids=searchable,
            )
        except EmbeddingFailed as error:  # the embedding model refused or failed: say so
            notes.append(f"Their passages could not be searched: {error}")
        else:
            lines.append(hits_text(hits))
            sources = hits_sources(hits)
    elif searchable:
        notes.append(
            "Their passages are not included here; the knowledge.search tool, if you "
            "have it, searches them."
        )
    return Addition(text="\n\n".join([*lines, *notes]), images=images, sources=sources)


def attachments_context(
    *, owner: Any, texts: dict[int, str], accepts_images: bool
) -> dict[int, Addition]:
    """What the model reads of the files of each user message of ``texts`` (message
    id → its text, the retrieval's query): two queries (the links, the passages' rows)
    plus a search per message with ready text files. ``accepts_images``: the
    model's (``ModelConfig.accepts_images``); else an image is named, not sent."""
    by_message: dict[int, list[Document]] = {}
    links = MessageAttachment.objects.filter(message_id__in=list(texts)).select_related("document")
    for link in links:
        by_message.setdefault(link.message_id, []).append(link.document)
    return {
        message_id: _addition(owner, texts[message_id], documents, accepts_images=accepts_images)
        for message_id, documents in by_message.items()
    }


def content_with(text: str, addition: Addition) -> str | list[dict[str, Any]]:
    """A user message's content with what its files add: text, or (with images)
    OpenAI-style parts, the text first."""
    combined = f"{text}\n\n{addition.text}"
    if not addition.images:
        return combined
    return [{"type": "text", "text": combined}, *addition.images]


def content_text(content: Any) -> str:
    """The text of a message's content: itself, or its text parts joined."""
    if isinstance(content, list):
        return "\n\n".join(
            str(part.get("text", "")) for part in content if isinstance(part, dict)
        ).strip()
    return str(content or "")
