"""Embeddings through litellm for a model config of kind embedding (against llmock's
OpenAI ``/v1/embeddings``, 1536-wide vectors), charged as chat calls are; search that
never compares two models' vectors; re-embedding; and embedding models kept out of
every chat model picker."""

from __future__ import annotations

from decimal import Decimal

import numpy as np
import pytest
from django.core.management import call_command

from accounts.models import BudgetReservation, UsageRecord
from audit.models import AuditEvent
from conversations.models import ModelConfig
from conversations.selectors import model_configs_enabled, model_names_enabled
from conversations.services import ModelUnavailable, model_config_pick
from knowledge.embeddings import MODEL as OFFLINE
from knowledge.embeddings import embedder_current, vectors_from
from knowledge.models import Chunk, Document
from knowledge.selectors import chunks_rank_meaning, chunks_search
from knowledge.services import document_ingest
from tests.factories import BudgetFactory, ModelConfigFactory
from tools.registry import ToolError

from .test_search import search_tool

pytestmark = pytest.mark.django_db

NOTES = b"## Harbour\n\nFerries leave the harbour every hour.\n\n## Orchard\n\nApples in September."


@pytest.fixture
def embedding_model(llmock, settings) -> ModelConfig:
    """An embedding model config on llmock, priced, named as the deployment's."""
    config = ModelConfig.objects.create(
        name="Mock embeddings",
        litellm_model="openai/text-embedding-3-small",
        api_base=llmock.base_url("openai"),
        api_key_env="OPENAI_API_KEY",
        kind=ModelConfig.Kind.EMBEDDING,
        input_cost_per_token=Decimal("0.000001"),
        output_cost_per_token=Decimal(0),
    )
    settings.TOLLGATE_KNOWLEDGE_EMBEDDING_MODEL = config.name
    return config


def embedding_requests(llmock) -> list:
    return [r for r in llmock.requests if r.path.endswith("/embeddings")]


def test_ingestion_embeds_through_litellm_and_charges_the_owner(
    user, embedding_model, ingest, llmock
):
    document = ingest(user, "notes.md", NOTES)
    assert document.status == Document.Status.READY, document.error
    chunks = list(document.chunks.all())
    assert {c.embedding_model for c in chunks} == {"openai/text-embedding-3-small"}
    vectors = vectors_from([c.embedding for c in chunks])
    assert vectors.shape == (len(chunks), 1536)  # the model's width, not the offline 256
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert len(embedding_requests(llmock)) == 1  # one batch
    record = UsageRecord.objects.get(user=user)
    assert record.model == "openai/text-embedding-3-small"
    assert record.prompt_tokens > 0
    assert record.cost_usd == record.prompt_tokens * Decimal("0.000001")
    event = AuditEvent.objects.get(action="llm.call")
    assert (event.target_type, event.target_id) == ("document", str(document.pk))
    assert event.data["purpose"] == "embedding"


def test_a_query_is_embedded_by_the_chunks_model(user, embedding_model, ingest, llmock):
    document = ingest(user, "notes.md", NOTES)
    before = len(embedding_requests(llmock))
    # llmock's vectors are a hash of the text: the same text, the same vector.
    (hit, *_) = chunks_search(user=user, query="Orchard\nApples in September.", limit=2)
    assert hit.chunk.section == "Orchard" and hit.chunk.document == document
    assert len(embedding_requests(llmock)) == before + 1
    assert UsageRecord.objects.filter(user=user).count() == 2  # ingestion, then the query


def test_search_never_compares_two_models_vectors_until_re_embedded(
    user, ingest, llmock, settings, embedding_model
):
    settings.TOLLGATE_KNOWLEDGE_EMBEDDING_MODEL = ""
    offline = ingest(user, "offline.md", b"## Parking\n\nStaff park in the garage.")
    settings.TOLLGATE_KNOWLEDGE_EMBEDDING_MODEL = embedding_model.name
    ingest(user, "notes.md", NOTES)
    settings.TOLLGATE_KNOWLEDGE_MIN_SIMILARITY = -1.0  # every vector of the model counts
    chunks = Chunk.objects.filter(document__owner=user)
    ranked = chunks_rank_meaning(chunks, "parking", embedder=embedder_current(), user=user)
    assert ranked and not set(ranked) & set(offline.chunks.values_list("pk", flat=True))
    # The offline document is still found by its words.
    assert chunks_search(user=user, query="garage", limit=5)[0].chunk.document == offline

    call_command("knowledge_reembed")
    assert set(chunks.values_list("embedding_model", flat=True)) == {embedding_model.litellm_model}
    assert len(bytes(offline.chunks.get().embedding)) == 1536 * 4
    ranked = chunks_rank_meaning(chunks, "parking", embedder=embedder_current(), user=user)
    assert set(offline.chunks.values_list("pk", flat=True)) <= set(ranked)


def test_reembed_back_to_the_offline_model(user, ingest, settings, embedding_model):
    document = ingest(user, "notes.md", NOTES)
    settings.TOLLGATE_KNOWLEDGE_EMBEDDING_MODEL = ""
    call_command("knowledge_reembed")
    assert set(document.chunks.values_list("embedding_model", flat=True)) == {OFFLINE}
    assert chunks_search(user=user, query="When do ferries leave?", limit=1)[0].chunk.section == (
        "Harbour"
    )


def test_a_budget_refusal_fails_the_ingestion_and_no_call_is_made(
    user, embedding_model, ingest, llmock
):
    BudgetFactory(user=user, cost_limit_usd=Decimal("0"))
    document = ingest(user, "notes.md", NOTES)
    assert document.status == Document.Status.FAILED
    assert "budget" in document.error.lower()
    assert embedding_requests(llmock) == []
    assert AuditEvent.objects.filter(action="budget.refused").exists()


def test_a_provider_error_fails_the_ingestion_and_gives_the_hold_back(
    user, embedding_model, ingest, llmock
):
    BudgetFactory(user=user, cost_limit_usd=Decimal("5"))
    llmock.fail(401, times=None)
    document = ingest(user, "notes.md", NOTES)
    assert document.status == Document.Status.FAILED
    assert "Mock embeddings rejected the API key (check the OPENAI_API_KEY variable)." in (
        document.error
    )
    assert embedding_requests(llmock)
    reservations = BudgetReservation.objects.filter(user=user)
    assert reservations.exists()
    assert set(reservations.values_list("status", flat=True)) == {"released"}
    assert not UsageRecord.objects.filter(user=user).exists()


def test_a_misnamed_embedding_model_is_said_plainly(user, ingest, settings, embedding_model):
    document = ingest(user, "notes.md", NOTES)
    settings.TOLLGATE_KNOWLEDGE_EMBEDDING_MODEL = "Nope"
    with pytest.raises(ToolError, match=r"'Nope'.*not an enabled model config of kind embedding"):
        search_tool(user.pk, query="ferries")
    embedding_model.enabled = False
    embedding_model.save()
    settings.TOLLGATE_KNOWLEDGE_EMBEDDING_MODEL = embedding_model.name
    document.status = Document.Status.PENDING
    document.save()
    document_ingest(document_id=document.pk)
    document.refresh_from_db()
    assert document.status == Document.Status.FAILED
    assert "not an enabled model config of kind embedding" in document.error


def test_embedding_models_are_never_offered_for_chat(db):
    chat = ModelConfigFactory(is_default=True)
    embedder = ModelConfig.objects.create(
        name="Embeddings", litellm_model="openai/text-embedding-3-small", kind="embedding"
    )
    assert model_configs_enabled() == [chat]
    assert model_names_enabled() == [chat.name]
    assert model_config_pick(model_config_id=None) == chat
    with pytest.raises(ModelUnavailable):
        model_config_pick(model_config_id=embedder.pk)
    chat.enabled = False
    chat.save()
    with pytest.raises(ModelUnavailable, match="No model is enabled"):
        model_config_pick(model_config_id=None)
