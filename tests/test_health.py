"""``/healthz`` against the real PostgreSQL and Redis, and with each one down."""

from __future__ import annotations

import pytest
from channels.layers import channel_layers
from django.conf import settings

pytestmark = pytest.mark.django_db

CLOSED_PORT_URL = "redis://127.0.0.1:1/0"


@pytest.fixture
def fresh_channel_layers():
    channel_layers.backends.clear()
    yield
    channel_layers.backends.clear()


def test_healthy_when_everything_answers(client, fresh_channel_layers):
    response = client.get("/healthz")
    assert response.status_code == 200, response.json()
    body = response.json()
    assert body["status"] == "ok"
    assert body["checks"]["database"] == "ok"
    assert body["checks"]["channel_layer"] == "ok"
    expected_broker = "ok" if settings.TOLLGATE_DISPATCHER == "celery" else "embedded"
    assert body["checks"]["broker"] == expected_broker


def test_503_names_the_broker_when_it_is_down(client, settings, fresh_channel_layers):
    settings.TOLLGATE_DISPATCHER = "celery"
    settings.CELERY_BROKER_URL = CLOSED_PORT_URL
    response = client.get("/healthz")
    assert response.status_code == 503
    body = response.json()
    assert body["failing"] == ["broker"]
    assert body["checks"]["database"] == "ok"


def test_503_names_the_channel_layer_when_it_is_down(client, settings, fresh_channel_layers):
    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [CLOSED_PORT_URL]},
        }
    }
    response = client.get("/healthz")
    assert response.status_code == 503
    assert "channel_layer" in response.json()["failing"]


def test_503_names_the_database_when_it_fails(client, monkeypatch, fresh_channel_layers):
    from django.db import OperationalError

    from project import health

    def broken() -> None:
        raise OperationalError("connection refused")

    monkeypatch.setattr(health, "check_database", broken)
    response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json()["failing"] == ["database"]
