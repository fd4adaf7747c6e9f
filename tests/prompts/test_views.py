"""The prompts pages, the picker's endpoints and admin, over HTTP."""

from __future__ import annotations

import json

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from prompts.models import Prompt, PromptLabel, PromptVersion
from tests.factories import GroupFactory, PromptFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def secret(other_user) -> Prompt:
    return PromptFactory(
        owner=other_user, name="Secret recipe", command="secret", template="Hush {{ x }}"
    )


def test_another_users_private_prompt_is_invisible_everywhere(user_client, secret):
    listed = user_client.get(reverse("prompts:list"), {"q": "secret"}).content.decode()
    assert "Secret recipe" not in listed
    picker = user_client.get(reverse("prompts:picker"), {"q": "sec"}).content.decode()
    assert "Secret recipe" not in picker and "/secret" not in picker.replace("/secret ", "")
    for name in ("detail", "edit", "diff", "export", "picker-fill"):
        response = user_client.get(reverse(f"prompts:{name}", args=[secret.pk]), {"a": 1, "b": 1})
        assert response.status_code == 404, name
    for name, data in (
        ("picker-render", {"var_x": "1"}),
        ("label", {"label": "production", "number": 1}),
        ("restore", {"number": 1}),
        ("share", {"visibility": "private"}),
        ("delete", {}),
    ):
        assert user_client.post(reverse(f"prompts:{name}", args=[secret.pk]), data).status_code == (
            404
        ), name
    assert Prompt.objects.filter(pk=secret.pk).exists()


def test_a_prompt_shared_with_my_group_is_listed_read_only(user_client, user, secret, other_user):
    team = GroupFactory()
    user.groups.add(team)
    other_user.groups.add(team)
    secret.visibility = "groups"
    secret.save()
    secret.groups.add(team)
    assert "Secret recipe" in user_client.get(reverse("prompts:list")).content.decode()
    assert (
        "Secret recipe" in user_client.get(reverse("prompts:picker"), {"q": "sec"}).content.decode()
    )
    detail = user_client.get(reverse("prompts:detail", args=[secret.pk]))
    assert detail.status_code == 200 and b"Edit (new version)" not in detail.content
    assert user_client.get(reverse("prompts:edit", args=[secret.pk])).status_code == 403
    label = user_client.post(
        reverse("prompts:label", args=[secret.pk]), {"label": "production", "number": 1}
    )
    assert label.status_code == 403


def test_create_edit_diff_move_label_restore_over_http(user_client, user):
    created = user_client.post(
        reverse("prompts:create"),
        {
            "name": "Explain",
            "command": "/explain",
            "kind": "template",
            "template": "Explain {{ topic }} <simply>.",
        },
    )
    prompt = Prompt.objects.get(owner=user, command="explain")
    assert created.status_code == 302 and created.url == reverse("prompts:detail", args=[prompt.pk])
    edit = reverse("prompts:edit", args=[prompt.pk])
    assert "Explain {{ topic }}" in user_client.get(edit).content.decode()
    refused = user_client.post(
        edit, {"name": "Explain", "command": "explain", "template": "a\n{{ topic"}
    )
    assert refused.status_code == 400
    assert b"Line 2:" in refused.content and b"a\n{{ topic" in refused.content  # typed text kept
    user_client.post(
        edit,
        {
            "name": "Explain",
            "command": "explain",
            "template": "Explain {{ topic }} in depth.",
            "change_note": "deeper",
            "move_production": "on",
        },
    )
    assert list(prompt.versions.values_list("number", flat=True)) == [2, 1]

    diff = user_client.get(reverse("prompts:diff", args=[prompt.pk]), {"a": 1, "b": 2})
    html = diff.content.decode()
    assert 'class="diff"' in html
    assert "&lt;s" in html and "<simply>" not in html  # escaped, then sanitised
    assert "<script" not in html.split("<main", 1)[1].split("</main>", 1)[0]

    user_client.post(reverse("prompts:label", args=[prompt.pk]), {"label": "staging", "number": 1})
    assert PromptLabel.objects.get(prompt=prompt, name="staging").version.number == 1
    user_client.post(reverse("prompts:restore", args=[prompt.pk]), {"number": 1})
    latest = prompt.versions.first()
    assert latest.number == 3 and latest.template == "Explain {{ topic }} <simply>."


def test_the_picker_fills_variables_and_refuses_a_missing_one(user_client, user):
    prompt = PromptFactory(owner=user, command="brief", template="Brief {{ who }} on {{ what }}.")
    plain = PromptFactory(owner=user, command="thanks", template="Thank you!")
    listed = user_client.get(reverse("prompts:picker"), {"q": "/b"}).content.decode()
    assert 'role="option"' in listed and "/brief" in listed and "/thanks" not in listed
    form = user_client.get(reverse("prompts:picker-fill", args=[prompt.pk])).content.decode()
    assert 'name="var_who"' in form and 'name="var_what"' in form
    render = reverse("prompts:picker-render", args=[prompt.pk])
    missing = user_client.post(render, {"var_who": "Ana"})
    assert missing.status_code == 400 and b"Missing variable: what." in missing.content
    assert b'value="Ana"' in missing.content  # what was typed stays in the form
    done = user_client.post(render, {"var_who": "Ana", "var_what": "<DNS>"}).content.decode()
    assert "data-prompt-rendered" in done and "Brief Ana on &lt;DNS&gt;." in done
    direct = user_client.get(reverse("prompts:picker-fill", args=[plain.pk])).content.decode()
    assert "data-prompt-rendered" in direct and "Thank you!" in direct


def test_export_and_import_over_http(user_client, user, client, other_user):
    prompt = PromptFactory(owner=user, command="fmt", template="Format {{ x }}")
    exported = user_client.get(reverse("prompts:export", args=[prompt.pk]))
    assert exported["Content-Disposition"] == 'attachment; filename="prompt-fmt.json"'
    data = json.loads(exported.content)
    client.force_login(other_user)
    upload = SimpleUploadedFile("p.json", exported.content, content_type="application/json")
    response = client.post(reverse("prompts:import"), {"file": upload})
    copy = Prompt.objects.get(owner=other_user, command="fmt")
    assert response.status_code == 302 and copy.versions.get().template == "Format {{ x }}"
    bad = client.post(reverse("prompts:import"), {"text": json.dumps(data | {"format": "x"})})
    assert bad.status_code == 400 and b"Not a prompt file" in bad.content
    broken = client.post(reverse("prompts:import"), {"text": "{not json"})
    assert broken.status_code == 400


def test_admin_saves_an_edit_as_a_new_version_and_shows_versions_read_only(admin_client):
    prompt = PromptFactory(template="One")
    url = reverse("admin:prompts_prompt_change", args=[prompt.pk])
    page = admin_client.get(url)
    assert page.status_code == 200
    form = {
        "name": prompt.name, "command": prompt.command, "description": "", "kind": "template",
        "owner": prompt.owner_id, "visibility": "private", "template": "Two",
        "model_name": "", "temperature": "", "max_output_tokens": "", "change_note": "admin",
        "move_labels": "production",
        "labels-TOTAL_FORMS": "1", "labels-INITIAL_FORMS": "1", "labels-MIN_NUM_FORMS": "0",
        "labels-MAX_NUM_FORMS": "1000", "labels-0-id": prompt.labels.get().pk,
        "labels-0-prompt": prompt.pk, "labels-0-name": "production",
        "labels-0-version": prompt.versions.get().pk,
        "versions-TOTAL_FORMS": "1", "versions-INITIAL_FORMS": "1", "versions-MIN_NUM_FORMS": "0",
        "versions-MAX_NUM_FORMS": "1000",
    }  # fmt: skip
    response = admin_client.post(url, form)
    assert response.status_code == 302, response.content.decode()[:2000]
    assert list(prompt.versions.values_list("number", "template")) == [(2, "Two"), (1, "One")]
    assert PromptLabel.objects.get(prompt=prompt, name="production").version.number == 2
    refused = admin_client.post(url, form | {"template": "{{ broken"})
    assert refused.status_code == 200 and b"Line 1:" in refused.content
    version = PromptVersion.objects.get(prompt=prompt, number=1)
    version_page = admin_client.get(
        reverse("admin:prompts_promptversion_change", args=[version.pk])
    )
    assert version_page.status_code == 200 and b'name="template"' not in version_page.content
    assert (
        admin_client.post(
            reverse("admin:prompts_promptversion_change", args=[version.pk]), {"template": "x"}
        ).status_code
        == 403
    )


def test_odd_input_is_refused_or_ignored_never_an_error(user_client, user):
    prompt = PromptFactory(owner=user, command="odd")
    assert user_client.get(reverse("prompts:list"), {"q": "a\x00b"}).status_code == 200
    assert user_client.get(reverse("prompts:picker"), {"q": "/\x00"}).status_code == 200
    diff = user_client.get(reverse("prompts:diff", args=[prompt.pk]), {"a": 10**30, "b": "x"})
    assert diff.status_code == 404
    away = user_client.post(
        reverse("prompts:reformulation"), {"prompt_id": prompt.pk, "next": "https://evil.example/"}
    )
    assert away.status_code == 302 and away.url == reverse("prompts:list")
