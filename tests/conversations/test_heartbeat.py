"""Provider heartbeats in ``/healthz`` (``conversations.heartbeat``): per listed
ModelConfig, cached, informational (never a 503)."""

from __future__ import annotations

import pytest
from django.core.cache import cache

from conversations import heartbeat
from tests.factories import ModelConfigFactory

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _fresh_cache():
    cache.clear()
    yield
    cache.clear()


def test_no_model_is_pinged_unless_listed(client, settings, monkeypatch):
    settings.TOLLGATE_HEALTHZ_MODELS = []
    monkeypatch.setattr(heartbeat, "model_heartbeat", lambda config: pytest.fail("pinged"))
    body = client.get("/healthz").json()
    assert "models" not in body


def test_listed_models_are_reported_and_cached(client, settings, monkeypatch):
    demo = ModelConfigFactory()
    broken = ModelConfigFactory(
        name="Nowhere", litellm_model="openai/gpt-nowhere", api_base="http://127.0.0.1:9/v1"
    )
    settings.TOLLGATE_HEALTHZ_MODELS = [demo.name, broken.name, "Missing"]
    settings.TOLLGATE_LLM_MAX_RETRIES = 0
    calls = []
    real = heartbeat._call

    async def counted(config):
        calls.append(config.name)
        return await real(config)

    monkeypatch.setattr(heartbeat, "_call", counted)
    page = client.get("/healthz")
    assert page.status_code == 200  # a provider down is reported, not a 503
    models = page.json()["models"]
    assert models[demo.name]["status"] == "ok"
    assert models[demo.name]["latency_ms"] >= 0
    assert models[broken.name]["status"].startswith("error: ")
    assert models["Missing"] == {"status": "error: no such model config"}
    again = client.get("/healthz").json()["models"]
    assert again[demo.name] == models[demo.name]  # from the cache: same check
    assert sorted(calls) == sorted([demo.name, broken.name])
