"""The errors of the knowledge app, each with a message fit for the person reading it."""

from __future__ import annotations


class KnowledgeError(Exception):
    """A refused knowledge operation; ``str(exc)`` is shown to the user."""


class DocumentRefused(KnowledgeError):
    """An upload refused before anything was stored: too large, over quota, or of a
    type that cannot be read. ``http_status``: what a page answers with (400)."""

    http_status = 400


class DocumentOverLimit(DocumentRefused):
    """An upload over the size limit per file or the owner's storage quota (413)."""

    http_status = 413


class DocumentNotFound(KnowledgeError):
    """No such document, or one the user may not see (the same answer for both)."""


class ExtractionFailed(KnowledgeError):
    """The file's content could not be read as its detected type."""


class EmbeddingFailed(KnowledgeError):
    """Text could not be embedded: the deployment's embedding model is missing or
    disabled, refused the call (a budget, a rate limit, its key), or failed."""
