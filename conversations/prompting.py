"""What a conversation's model calls are made with: its settings, resolved.

A conversation's settings (``Conversation.system_prompt*``, ``temperature``,
``max_output_tokens``, and its model) are the one source of the system prompt
and the call's parameters:

- the system prompt is a library prompt (``prompts``) at the label the
  conversation follows (``production`` by default, ``latest``, any other) or at
  a pinned version, rendered with the conversation's variable values; else the
  conversation's own text; else ``TOLLGATE_SYSTEM_PROMPT``;
- temperature: the conversation's, else the prompt version's, else the model
  config's own (``ModelConfig.temperature``, applied by the gateway:
  ``gateway.call_temperature``), else none sent (the provider's default);
- max output tokens: the conversation's, else the prompt version's, else the
  model's; never more than the model's (``ModelConfig.max_output_tokens``, what
  an administrator allows).

:func:`call_settings` resolves them when a run starts (``message_send``,
``run_retry``); the run keeps the result (``Run.model_config``,
``Run.prompt_version``, ``Run.parameters``: :meth:`CallSettings.record`), and
every model call of the run reads it back with :func:`run_call`, so a label
moved or a setting changed mid-run does not change a run already going, and a
run says exactly what it used.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.conf import settings

from conversations.agents import agent_record
from conversations.models import AgentProfile, Conversation, ModelConfig, Run
from prompts.models import LATEST, PromptVersion
from prompts.selectors import prompt_version_for_use
from prompts.templating import template_render

#: Where a run's system prompt came from (``Run.parameters["system_prompt"]["source"]``).
LIBRARY, TEXT, DEFAULT = "library", "text", "default"


@dataclass(frozen=True)
class CallSettings:
    """A conversation's settings, resolved: what its next run's calls use."""

    config: ModelConfig
    system_prompt: str
    source: str
    version: PromptVersion | None
    label: str
    variables: dict[str, str]
    temperature: Decimal | None
    max_output_tokens: int
    #: The agent answering, as the run records it (``agents.agent_record``).
    agent: dict[str, Any] | None = None

    def record(self) -> dict[str, Any]:
        """The JSON a run keeps (``Run.parameters``) and its detail shows."""
        prompt: dict[str, Any] = {"source": self.source, "text": self.system_prompt}
        if self.version is not None:
            prompt |= {
                "prompt_id": self.version.prompt_id,
                "prompt_name": self.version.prompt.name,
                "command": self.version.prompt.command,
                "label": self.label,
                "pinned": not self.label,
                "version_id": self.version.pk,
                "version_number": self.version.number,
                "variables": self.variables,
            }
        recorded: dict[str, Any] = {
            "model": {
                "id": self.config.pk,
                "name": self.config.name,
                "litellm_model": self.config.litellm_model,
            },
            "system_prompt": prompt,
            "temperature": None if self.temperature is None else str(self.temperature),
            "max_output_tokens": self.max_output_tokens,
        }
        if self.agent is not None:
            recorded["agent"] = self.agent
        return recorded


def _max_tokens(asked: int | None, config: ModelConfig) -> int:
    return min(asked or config.max_output_tokens, config.max_output_tokens)


def call_settings(
    *,
    conversation: Conversation,
    config: ModelConfig | None = None,
    agent: AgentProfile | None = None,
) -> CallSettings:
    """Resolve ``conversation``'s settings for a run starting now (its model loaded);
    ``config``: another model than the conversation's (a Compare part's).

    ``agent`` (default: the conversation's, ``Conversation.agent``): the agent's
    instructions, model and parameters instead of the conversation's (its library
    prompt followed at its label, with the conversation's variable values); its
    model, when it has none, the conversation's.

    Raises ``prompts.errors.PromptUnavailable`` (its library prompt is no longer
    visible to the owner, or its label is gone), ``MissingVariables`` (a variable
    of the prompt has no value: by name) or ``RenderFailed``: nothing may be sent
    then. Reads only; a few queries with a library prompt or an agent, none without.
    """
    if agent is None and conversation.agent_id is not None:
        agent = conversation.agent
    if agent is not None:
        return _resolve(
            conversation=conversation,
            config=config or agent.model_config or conversation.model_config,
            prompt_id=agent.prompt_id,
            label=agent.prompt_label,
            version_id=None,
            text=agent.instructions,
            temperature=agent.temperature,
            max_output_tokens=agent.max_output_tokens,
            agent=agent,
        )
    return _resolve(
        conversation=conversation,
        config=config or conversation.model_config,
        prompt_id=conversation.system_prompt_id,
        label=conversation.system_prompt_label,
        version_id=conversation.system_prompt_version_id,
        text=conversation.system_prompt_text,
        temperature=conversation.temperature,
        max_output_tokens=conversation.max_output_tokens,
        agent=None,
    )


def _resolve(
    *,
    conversation: Conversation,
    config: ModelConfig,
    prompt_id: int | None,
    label: str,
    version_id: int | None,
    text: str,
    temperature: Decimal | None,
    max_output_tokens: int | None,
    agent: AgentProfile | None,
) -> CallSettings:
    """The one resolution of a system prompt and parameters (``call_settings``): a
    library prompt at ``label`` or pinned ``version_id``, else ``text``, else
    ``TOLLGATE_SYSTEM_PROMPT``."""
    version: PromptVersion | None = None
    followed = ""
    variables: dict[str, str] = {}
    if prompt_id is not None:
        version = prompt_version_for_use(
            user=conversation.owner, prompt_id=prompt_id, ref=label, version_id=version_id
        )
        if version_id is None:
            followed = label or _followed(version)
        given = conversation.prompt_variables or {}
        variables = {name: str(given[name]) for name in version.variables if name in given}
        prompt = template_render(
            version.template, variables, max_chars=settings.TOLLGATE_MAX_MESSAGE_CHARS
        )
        source = LIBRARY
    elif text.strip():
        prompt, source = text, TEXT
    else:
        prompt, source = settings.TOLLGATE_SYSTEM_PROMPT, DEFAULT
    if temperature is None and version is not None:
        temperature = version.temperature
    asked = max_output_tokens or (version.max_output_tokens if version else None)
    return CallSettings(
        config=config,
        system_prompt=prompt,
        source=source,
        version=version,
        label=followed,
        variables=variables,
        temperature=temperature,
        max_output_tokens=_max_tokens(asked, config),
        agent=None if agent is None else agent_record(agent, user=conversation.owner),
    )


def _followed(version: PromptVersion) -> str:
    """The label an empty ``system_prompt_label`` followed to ``version``."""
    names = {label.name for label in version.labels.all()}
    return "production" if "production" in names else LATEST


@dataclass(frozen=True)
class RunCall:
    """What each model call of a run is made with (:func:`run_call`)."""

    config: ModelConfig
    system_prompt: str
    temperature: Decimal | None
    max_output_tokens: int


def run_call(run: Run) -> RunCall:
    """The model, system prompt and parameters run ``run`` recorded when it started.

    A run recorded before conversations had settings (no ``parameters``) uses its
    conversation's model and ``TOLLGATE_SYSTEM_PROMPT``, as it did then. Its model
    deleted since, the conversation's. No query when the run was loaded by
    ``runs.run_lock`` (its model and its conversation's are joined).
    """
    config = run.model_config or run.conversation.model_config
    parameters = run.parameters or {}
    prompt = (parameters.get("system_prompt") or {}).get("text")
    temperature = parameters.get("temperature")
    return RunCall(
        config=config,
        system_prompt=prompt if prompt is not None else settings.TOLLGATE_SYSTEM_PROMPT,
        temperature=None if temperature is None else Decimal(temperature),
        max_output_tokens=_max_tokens(parameters.get("max_output_tokens"), config),
    )
