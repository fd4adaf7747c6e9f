"""A user's settings page (issue 22): default model and system prompt for new
conversations, theme, send key, and the account links."""

from __future__ import annotations

import pytest
from django.urls import reverse

from conversations import services
from conversations.models import ModelConfig, UserPreferences

pytestmark = pytest.mark.django_db


@pytest.fixture
def other_model(db):
    return ModelConfig.objects.create(name="Other", litellm_model="demo/other")


def test_the_settings_page_saves_and_new_conversations_start_with_the_defaults(
    user_client, user, demo_model, other_model
):
    url = reverse("conversations:preferences")
    page = user_client.get(url).content.decode()
    for link in ("account_change_password", "account_email"):
        assert reverse(link) in page
    assert 'value="system" checked' in page and 'value="enter" checked' in page
    response = user_client.post(
        url,
        {
            "default_model": other_model.pk,
            "default_system_prompt": "  Answer in French.\r\n",
            "theme": "dark",
            "send_key": "ctrl_enter",
        },
    )
    assert response.status_code == 302
    saved = UserPreferences.objects.get(user=user)
    assert (saved.default_model, saved.default_system_prompt) == (other_model, "Answer in French.")
    assert (saved.theme, saved.send_key) == ("dark", "ctrl_enter")

    conversation = services.conversation_create(user=user)
    assert conversation.model_config == other_model
    assert conversation.system_prompt_text == "Answer in French."
    assert services.conversation_create(user=user, model_config_id=demo_model.pk).model_config == (
        demo_model
    )
    other_model.enabled = False
    other_model.save()
    assert services.conversation_create(user=user).model_config == demo_model  # falls back

    home = user_client.get(reverse("home")).content.decode()
    assert '<html lang="en" data-theme="dark">' in home
    assert 'data-send-key="ctrl_enter"' in home
    assert "Ctrl+Enter to send" in home
    assert reverse("conversations:preferences") in home  # in the navigation


def test_bad_settings_are_refused_and_change_nothing(user_client, user, other_model):
    url = reverse("conversations:preferences")
    other_model.enabled = False
    other_model.save()
    refused = user_client.post(
        url, {"default_model": other_model.pk, "theme": "dark", "send_key": "enter"}
    )
    assert refused.status_code == 400 and "not available" in refused.content.decode()
    bad = user_client.post(url, {"theme": "purple", "send_key": "enter"})
    assert bad.status_code == 400
    assert not UserPreferences.objects.filter(user=user).exists()


def test_a_page_follows_the_system_theme_by_default(user_client):
    from django.test import Client

    assert '<html lang="en">' in user_client.get(reverse("home")).content.decode()
    assert '<html lang="en">' in Client().get(reverse("account_login")).content.decode()
