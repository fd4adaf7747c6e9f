"""Knowledge embeddings through litellm, for a ``ModelConfig`` of kind embedding.

``knowledge`` sits below this app and may not import it: it asks for the
deployment's embedding model with ``knowledge.signals.embedder_query``, which
:func:`embedder_configured` answers (connected in ``ConversationsConfig.ready``).
The rule is one setting: ``TOLLGATE_KNOWLEDGE_EMBEDDING_MODEL`` names the model
config (enabled, of kind embedding); empty, no answer, and knowledge uses its
offline model.

Every call is charged as a chat call is (``conversations.charging``): the budget
hold and rate limits before it (``call_admit``, the input's tokens and no output),
the usage recorded and audited as ``llm.call`` after it (``call_settle``), the hold
given back when the call fails.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from django.conf import settings
from django.db import transaction

from accounts.services import llm_call_abort
from conversations.charging import call_admit, call_settle
from conversations.gateway import CallUsage, GatewayError, cost_for, gateway_error, provider_kwargs
from conversations.models import ModelConfig
from knowledge.embeddings import vectors_unit
from knowledge.errors import EmbeddingFailed


def _input_tokens(config: ModelConfig, texts: list[str]) -> int:
    """litellm's count of ``texts``' tokens for ``config``'s model (what the budget
    hold is made of, and what is charged when the provider does not say)."""
    import litellm  # deliberately lazy: seconds at import (see gateway_preload)

    return sum(litellm.token_counter(model=config.litellm_model, text=text) for text in texts)


def _rows(response: Any) -> list[list[float]]:
    """The vectors of litellm's embedding response, in the order of the inputs
    (items are dicts or objects, depending on the provider's route)."""
    items = [item if isinstance(item, dict) else vars(item) for item in response.data]
    items.sort(key=lambda item: item.get("index", 0))
    return [item["embedding"] for item in items]


def texts_embed_litellm(
    *, config: ModelConfig, texts: list[str], user: Any, target_type: str, target_id: int
) -> np.ndarray:
    """Unit-length float32 vectors of ``texts`` (one row each, as wide as the model
    makes them) by ``config``'s model through ``litellm.embedding``, charged to
    ``user`` on ``target_type`` / ``target_id`` (audit's target: ``"document"``, ``"user"``).

    Raises ``EmbeddingFailed`` with a message for the user: refused before the call
    (a budget, a rate limit, no known price under a dollar budget: audited as
    ``budget.refused``), no API key, or the provider's error (classified as a chat
    call's). Call outside a transaction (the hold commits before the call)."""
    if not texts:
        return np.zeros((0, 0), dtype=np.float32)
    tokens = _input_tokens(config, texts)
    admission, refused = call_admit(
        user=user,
        config=config,
        prompt_tokens=tokens,
        max_tokens=0,
        run_id=None,
        target_type=target_type,
        target_id=target_id,
    )
    if admission is None:
        raise EmbeddingFailed(refused)
    import litellm  # deliberately lazy: seconds at import (see gateway_preload)

    started = time.monotonic()
    try:
        where = provider_kwargs(config)
        response = litellm.embedding(
            model=config.litellm_model,
            input=texts,
            timeout=settings.TOLLGATE_LLM_TIMEOUT,
            api_base=where.get("api_base"),
            api_key=where.get("api_key"),
        )
        rows = _rows(response)
        if len(rows) != len(texts) or len({len(row) for row in rows}) != 1:
            raise EmbeddingFailed(f"{config.name} answered with vectors that do not fit the texts.")
    except Exception as exc:
        with transaction.atomic():
            llm_call_abort(admission=admission)
        if isinstance(exc, EmbeddingFailed):
            raise
        error = exc if isinstance(exc, GatewayError) else gateway_error(exc, config)
        raise EmbeddingFailed(error.user_message) from exc
    latency_ms = int((time.monotonic() - started) * 1000)
    usage = getattr(response, "usage", None)
    used = getattr(usage, "prompt_tokens", None) or tokens
    with transaction.atomic():
        call_settle(
            admission=admission,
            user=user,
            conversation_id=None,
            model=config.litellm_model,
            usage=CallUsage(
                prompt_tokens=used,
                cost_usd=cost_for(config=config, prompt_tokens=used, completion_tokens=0),
            ),
            latency_ms=latency_ms,
            target_type=target_type,
            target_id=target_id,
            data={"purpose": "embedding", "inputs": len(texts)},
        )
    return vectors_unit(rows)


@dataclass(frozen=True)
class LitellmEmbedder:
    """``knowledge.embeddings.Embedder`` for a model config of kind embedding; its
    ``name`` (stored on each chunk it embeds) is the config's litellm model string,
    so vectors stay comparable while an admin renames the config or moves its base."""

    config: ModelConfig
    name: str

    def embed(self, texts: list[str], *, user: Any, target_type: str, target_id: int) -> np.ndarray:
        return texts_embed_litellm(
            config=self.config, texts=texts, user=user, target_type=target_type, target_id=target_id
        )


def embedder_configured(**_signal: Any) -> LitellmEmbedder | None:
    """Receiver of ``knowledge.signals.embedder_query``: the embedder of the model
    config ``TOLLGATE_KNOWLEDGE_EMBEDDING_MODEL`` names, or ``None`` when the setting
    is empty (knowledge's offline model). One query. Raises ``EmbeddingFailed`` when
    no enabled model config of kind embedding has that name."""
    name = settings.TOLLGATE_KNOWLEDGE_EMBEDDING_MODEL
    if not name:
        return None
    config = ModelConfig.objects.filter(
        name=name, enabled=True, kind=ModelConfig.Kind.EMBEDDING
    ).first()
    if config is None:
        raise EmbeddingFailed(
            f"The embedding model {name!r} (TOLLGATE_KNOWLEDGE_EMBEDDING_MODEL) is not an "
            "enabled model config of kind embedding; an administrator must fix it."
        )
    return LitellmEmbedder(config=config, name=config.litellm_model)
