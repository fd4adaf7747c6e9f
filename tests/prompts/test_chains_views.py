"""The chains page, its form and the composer's chain picker, over HTTP: a user never
sees, runs or changes another user's private chain; refusals name the step and the
template's line, and keep what was typed."""

from __future__ import annotations

import pytest
from django.urls import reverse

from audit.models import AuditEvent
from conversations.models import Message, Run
from prompts.models import Chain
from tests.factories import ChainFactory, ConversationFactory, ModelConfigFactory

pytestmark = pytest.mark.django_db


def _steps(*rows: dict[str, str]) -> dict[str, str]:
    data: dict[str, str] = {}
    for n, row in enumerate(rows):
        data |= {f"step-{n}-{key}": value for key, value in {"max_rounds": "1", **row}.items()}
    return data


@pytest.fixture
def secret(other_user) -> Chain:
    return ChainFactory(owner=other_user, name="Secret pipeline", steps=[{"template": "hush"}])


def test_another_users_private_chain_is_invisible_and_untouchable(user_client, user, secret):
    listed = user_client.get(reverse("prompts:chains")).content.decode()
    assert "Secret pipeline" not in listed
    assert "Draft → critique → revise" in listed  # the deployment's, shared with everyone
    edit = reverse("prompts:chain-edit", args=[secret.pk])
    assert user_client.get(edit).status_code == 404
    form = {"name": "Mine now", "visibility": "private", **_steps({"template": "x"})}
    assert user_client.post(edit, form).status_code == 404
    assert user_client.post(reverse("prompts:chain-delete", args=[secret.pk])).status_code == 404
    secret.refresh_from_db()
    assert secret.name == "Secret pipeline"
    # Nor can it be run from a chat, or offered there.
    conversation = ConversationFactory(owner=user, model_config=ModelConfigFactory())
    page = user_client.get(reverse("conversations:detail", args=[conversation.pk])).content.decode()
    assert "Chain: Draft → critique → revise" in page and "Secret pipeline" not in page
    sent = user_client.post(
        reverse("conversations:message-send", args=[conversation.pk]),
        {"content": "hello", "chain_id": str(secret.pk)},
    )
    assert sent.status_code == 404
    assert not Message.objects.filter(conversation=conversation).exists()


def test_a_shared_chain_is_visible_but_only_its_owner_changes_it(user_client):
    built_in = Chain.objects.get(name="Draft → critique → revise")
    assert user_client.get(reverse("prompts:chain-edit", args=[built_in.pk])).status_code == 403
    deleted = user_client.post(reverse("prompts:chain-delete", args=[built_in.pk]))
    assert deleted.status_code == 403
    assert Chain.objects.filter(pk=built_in.pk).exists()


def test_create_edit_and_delete_a_chain(user_client, user):
    form = {
        "name": "Answer then check",
        "description": "Two calls",
        "visibility": "private",
        **_steps(
            {"name": "Answer", "template": "{{ input }}", "tools_allowed": "on"},
            {"name": "Check", "template": "Check: {{ previous_response }}",
             "judge_template": "Is {{ response }} right?", "max_rounds": "3"},
        ),
    }  # fmt: skip
    response = user_client.post(reverse("prompts:chain-create"), form)
    assert response.status_code == 302, response.content.decode()[:2000]
    chain = Chain.objects.get(owner=user)
    steps = list(chain.steps.values_list("position", "name", "tools_allowed", "max_rounds"))
    assert steps == [(0, "Answer", True, 1), (1, "Check", False, 3)]
    assert AuditEvent.objects.filter(action="chain.created", target_id=str(chain.pk)).exists()
    page = user_client.get(reverse("prompts:chain-edit", args=[chain.pk])).content.decode()
    assert "Check: {{ previous_response }}" in page
    form["name"] = "Renamed"
    form["step-1-template"] = ""
    form["step-1-name"] = ""
    form["step-1-judge_template"] = ""  # the row emptied: the step is dropped
    assert user_client.post(reverse("prompts:chain-edit", args=[chain.pk]), form).status_code == 302
    chain.refresh_from_db()
    assert chain.name == "Renamed" and chain.steps.count() == 1
    assert user_client.post(reverse("prompts:chain-delete", args=[chain.pk])).status_code == 302
    assert not Chain.objects.filter(pk=chain.pk).exists()


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (
            ({"template": "ok"}, {"template": "line one\n{{ previous_response"}),
            "Step 2: the template does not compile. Line 2:",
        ),
        (({"template": "{{ topic }}"},), "Step 1: unknown variable topic"),
        (({"template": "ok", "max_rounds": "3"},), "Step 1: more than one round needs a judge"),
        (({"template": "ok", "model_name": "Nope"},), "Select a valid choice"),
        ((), "A chain needs at least one step."),
    ],
)
def test_a_refused_chain_says_why_and_keeps_what_was_typed(user_client, user, rows, message):
    form = {"name": "Typed name", "visibility": "private", **_steps(*rows)}
    response = user_client.post(reverse("prompts:chain-create"), form)
    assert response.status_code == 400
    html = response.content.decode()
    assert message in html
    assert 'value="Typed name"' in html
    for row in rows:
        assert row["template"].split("\n")[0] in html
    assert not Chain.objects.filter(owner=user).exists()


def test_the_composer_runs_a_chain_over_http(user_client, user):
    conversation = ConversationFactory(owner=user, model_config=ModelConfigFactory())
    mine = ChainFactory(owner=user, name="Mine", steps=[{"template": "{{ input }}"}])
    response = user_client.post(
        reverse("conversations:message-send", args=[conversation.pk]),
        {"content": "hello", "chain_id": str(mine.pk)},
    )
    assert response.status_code in (200, 302)
    run = Run.objects.get(conversation=conversation, orchestrator=None)
    assert (run.kind, run.status) == ("chain", "awaiting_parts")
    assert run.parameters["chain"]["name"] == "Mine"
    assert run.parts.count() == 1
    bad = user_client.post(
        reverse("conversations:message-send", args=[conversation.pk]),
        {"content": "again", "chain_id": "7.5"},
    )
    assert bad.status_code == 400


def test_admin_edits_a_built_in_chains_steps_checked_and_audited(client, admin_user):
    client.force_login(admin_user)
    chain = Chain.objects.get(name="Answer → verify with another model")
    url = reverse("admin:prompts_chain_change", args=[chain.pk])
    assert client.get(url).status_code == 200
    steps = list(chain.steps.order_by("position"))
    form = {
        "name": chain.name, "description": chain.description, "visibility": "everyone",
        "steps-TOTAL_FORMS": str(len(steps)), "steps-INITIAL_FORMS": str(len(steps)),
        "steps-MIN_NUM_FORMS": "0", "steps-MAX_NUM_FORMS": "1000",
    }  # fmt: skip
    for n, step in enumerate(steps):
        form |= {
            f"steps-{n}-id": str(step.pk), f"steps-{n}-chain": str(chain.pk),
            f"steps-{n}-position": str(step.position), f"steps-{n}-name": step.name,
            f"steps-{n}-template": step.template, f"steps-{n}-max_rounds": "1",
        }  # fmt: skip
    form["steps-1-template"] = "{{ previous_response"
    refused = client.post(url, form)
    assert refused.status_code == 200
    assert "the template does not compile. Line 1" in refused.content.decode()
    form["steps-1-template"] = "Verify: {{ previous_response }}"
    assert client.post(url, form).status_code == 302
    assert chain.steps.get(position=1).template == "Verify: {{ previous_response }}"
    assert AuditEvent.objects.filter(action="chain_step.changed").exists()
