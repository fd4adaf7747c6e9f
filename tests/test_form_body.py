"""Form bodies Django's parser refuses: 413/400 with a message, one warning, no traceback."""

from __future__ import annotations

import logging

import pytest
from django.urls import reverse

from conversations.models import Message
from tests.factories import ConversationFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def conversation(user):
    return ConversationFactory(owner=user)


def _refusals(caplog) -> list[tuple[str, str, object]]:
    return [
        (record.name, record.levelname, record.exc_info)
        for record in caplog.records
        if record.levelno >= logging.WARNING
    ]


def test_a_body_over_the_upload_limit_is_413(user_client, conversation, settings, caplog):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    response = user_client.post(
        reverse("conversations:message-send", args=[conversation.pk]), {"content": "x" * 2000}
    )
    assert response.status_code == 413
    assert response.content.decode() == "The form is too large to send."
    assert _refusals(caplog) == [("django.request", "WARNING", None)]
    assert not Message.objects.exists()


def test_a_body_with_too_many_fields_is_400(user_client, conversation, settings, caplog):
    settings.DATA_UPLOAD_MAX_NUMBER_FIELDS = 10
    response = user_client.post(
        reverse("conversations:message-send", args=[conversation.pk]),
        "&".join(f"f{i}=1" for i in range(20)),
        content_type="application/x-www-form-urlencoded",
    )
    assert response.status_code == 400
    assert response.content.decode() == "The form has too many fields."
    assert _refusals(caplog) == [("django.request", "WARNING", None)]


def test_a_multipart_body_that_cannot_be_read_is_400(user_client, conversation, caplog):
    response = user_client.post(
        reverse("conversations:message-send", args=[conversation.pk]),
        b"--x\r\n\r\n",
        content_type="multipart/form-data; boundary=",
    )
    assert response.status_code == 400
    assert response.content.decode() == "The form could not be read."
    assert _refusals(caplog) == [("django.request", "WARNING", None)]


def test_a_body_within_the_limits_reaches_the_view(user_client, conversation, monkeypatch):
    monkeypatch.setattr("conversations.dispatch.dispatch_run_step", lambda run_id: None)
    response = user_client.post(
        reverse("conversations:message-send", args=[conversation.pk]), {"content": "hello"}
    )
    assert response.status_code == 302
    assert Message.objects.get().content == "hello"
