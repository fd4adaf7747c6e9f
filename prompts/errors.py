"""Refusals of the prompt services and selectors; ``str(error)`` is shown to people."""

from __future__ import annotations

from prompts.templating import MissingVariables, PromptTemplateError, RenderFailed, TemplateInvalid


class PromptError(ValueError):
    """A prompt request refused (bad input, or a state that does not allow it)."""


class PromptNotFound(PromptError):
    """No such prompt, or not one the user may see (answer 404, reveal nothing)."""


class PromptReadOnly(PromptError):
    """The user may see the prompt but not change it (someone else's, shared)."""


class PromptUnavailable(PromptError):
    """A prompt chosen earlier (a conversation's system prompt) can no longer be used:
    unshared, deleted, or its label removed."""


#: Everything a prompt can be refused with: the services' refusals and the templates'.
PROMPT_REFUSALS: tuple[type[ValueError], ...] = (PromptError, PromptTemplateError)

__all__ = [
    "PROMPT_REFUSALS",
    "MissingVariables",
    "PromptError",
    "PromptNotFound",
    "PromptReadOnly",
    "PromptTemplateError",
    "PromptUnavailable",
    "RenderFailed",
    "TemplateInvalid",
]
