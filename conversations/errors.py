"""The base of this app's refusals, below every module that raises one.

``services`` defines most of them (and is where callers catch them:
``services.ConversationError``); modules ``services`` imports, such as
``attachments``, subclass these without importing ``services``.
"""

from __future__ import annotations


class ConversationError(Exception):
    """Bad input for a conversation service; ``str(error)`` is shown to the user."""


class NotFound(ConversationError):
    """The object does not exist or is not the user's (answer 404, reveal nothing)."""
