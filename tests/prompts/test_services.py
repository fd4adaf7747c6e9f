"""The prompt library's services: versions, labels, restore, sharing, import/export."""

from __future__ import annotations

import pytest

from audit.models import AuditEvent
from prompts import services
from prompts.errors import PromptError, PromptNotFound, PromptReadOnly
from prompts.models import ImmutableVersion, Prompt, PromptLabel, PromptVersion
from prompts.selectors import prompt_export, prompt_get, prompt_picker, prompts_visible
from tests.factories import GroupFactory, ModelConfigFactory, PromptFactory, UserFactory

pytestmark = pytest.mark.django_db


def _events(action: str, prompt: Prompt) -> list[dict]:
    return list(
        AuditEvent.objects.filter(action=action, target_type="prompt", target_id=str(prompt.pk))
        .order_by("sequence")
        .values_list("data", flat=True)
    )


def _create(user, **kwargs) -> Prompt:
    fields = {"name": "Summarise", "command": "sum", "template": "Summarise for {{ audience }}."}
    return services.prompt_create(user=user, **(fields | kwargs))


def test_a_new_prompt_has_version_1_labelled_production_and_is_audited(user):
    prompt = _create(user, kind="system", change_note="")
    version = prompt.versions.get()
    assert (version.number, version.variables, version.author) == (1, ["audience"], user)
    assert PromptLabel.objects.get(prompt=prompt).version == version
    assert prompt.owner == user and prompt.visibility == "private"
    assert _events("prompt.created", prompt)[0]["command"] == "sum"
    assert _events("prompt.version_created", prompt)[0]["version"] == 1
    assert _events("prompt.label_moved", prompt) == [
        {"label": "production", "from_version": None, "to_version": 1}
    ]


@pytest.mark.parametrize(
    ("template", "says"),
    [
        ("Line one\nLine two {{ audience ", "Line 2: unexpected end of template"),
        ("ok\n\n{% for a in b %}", "Line 3:"),
        ("{{ x|nosuch }}", "Line 1: No filter named 'nosuch'"),
    ],
)
def test_a_template_that_does_not_compile_is_refused_with_its_line_and_nothing_saved(
    user, template, says
):
    with pytest.raises(PromptError, match="does not compile") as caught:
        _create(user, template=template)
    assert says in str(caught.value)
    assert not Prompt.objects.filter(owner=user).exists()
    prompt = _create(user)
    with pytest.raises(PromptError) as caught:
        services.prompt_version_create(user=user, prompt_id=prompt.pk, template=template)
    assert says in str(caught.value)
    assert prompt.versions.count() == 1


def test_versions_are_immutable_an_edit_is_version_n_plus_1(user):
    prompt = _create(user)
    first = prompt.versions.get()
    first.template = "changed"
    with pytest.raises(ImmutableVersion):
        first.save()
    with pytest.raises(ImmutableVersion):
        PromptVersion.objects.filter(pk=first.pk).update(template="changed")
    with pytest.raises(ImmutableVersion):
        first.delete()

    second = services.prompt_version_create(
        user=user, prompt_id=prompt.pk, template="Summarise for {{ who }}.", change_note="who"
    )
    third = services.prompt_version_create(
        user=user, prompt_id=prompt.pk, template="Shorter: {{ who }}.", labels=()
    )
    assert (second.number, third.number) == (2, 3)
    assert PromptVersion.objects.get(pk=first.pk).template == "Summarise for {{ audience }}."
    assert PromptLabel.objects.get(prompt=prompt, name="production").version == second
    assert [e["version"] for e in _events("prompt.version_created", prompt)] == [1, 2, 3]


def test_label_moves_are_audited_with_where_the_label_was(user):
    prompt = _create(user)
    services.prompt_version_create(user=user, prompt_id=prompt.pk, template="v2", labels=())
    services.prompt_label_move(user=user, prompt_id=prompt.pk, label="staging", number=2)
    services.prompt_label_move(user=user, prompt_id=prompt.pk, label="production", number=2)
    services.prompt_label_move(user=user, prompt_id=prompt.pk, label="production", number=2)
    services.prompt_label_move(user=user, prompt_id=prompt.pk, label="production", number=1)
    assert _events("prompt.label_moved", prompt) == [
        {"label": "production", "from_version": None, "to_version": 1},
        {"label": "staging", "from_version": None, "to_version": 2},
        {"label": "production", "from_version": 1, "to_version": 2},
        {"label": "production", "from_version": 2, "to_version": 1},
    ]
    with pytest.raises(PromptError, match="latest"):
        services.prompt_label_move(user=user, prompt_id=prompt.pk, label="latest", number=1)
    with pytest.raises(PromptNotFound):
        services.prompt_label_move(user=user, prompt_id=prompt.pk, label="staging", number=9)


def test_restore_copies_an_old_version_into_a_new_one(user):
    prompt = _create(user, temperature="0.3")
    services.prompt_version_create(user=user, prompt_id=prompt.pk, template="worse")
    restored = services.prompt_version_restore(user=user, prompt_id=prompt.pk, number=1)
    assert restored.number == 3
    assert restored.template == "Summarise for {{ audience }}."
    assert str(restored.temperature) == "0.30"
    assert restored.change_note == "Restored version 1"
    assert PromptLabel.objects.get(prompt=prompt, name="production").version == restored
    assert _events("prompt.version_restored", prompt) == [
        {"from_version": 1, "version": 3, "version_id": restored.pk}
    ]


def test_only_the_owner_writes_and_others_see_only_what_is_shared(user, other_user):
    mine = _create(user)
    with pytest.raises(PromptNotFound):
        prompt_get(user=other_user, prompt_id=mine.pk)
    with pytest.raises(PromptNotFound):
        services.prompt_version_create(user=other_user, prompt_id=mine.pk, template="x")
    assert list(prompts_visible(user=other_user)) == [
        p for p in prompts_visible(user=other_user) if p.owner_id != user.pk
    ]

    team = GroupFactory()
    user.groups.add(team)
    services.prompt_share(user=user, prompt_id=mine.pk, visibility="groups", group_ids=[team.pk])
    assert mine not in prompts_visible(user=other_user)
    other_user.groups.add(team)
    assert prompt_get(user=other_user, prompt_id=mine.pk) == mine
    with pytest.raises(PromptReadOnly):
        services.prompt_version_create(user=other_user, prompt_id=mine.pk, template="x")
    assert _events("prompt.shared", mine)[0]["to"] == {"visibility": "groups", "groups": [team.pk]}


def test_sharing_is_limited_to_ones_groups_and_everyone_to_staff(user, admin_user):
    prompt = _create(user)
    theirs = GroupFactory()
    with pytest.raises(PromptError, match="groups you belong to"):
        services.prompt_share(
            user=user, prompt_id=prompt.pk, visibility="groups", group_ids=[theirs.pk]
        )
    with pytest.raises(PromptError, match="Only administrators"):
        services.prompt_share(user=user, prompt_id=prompt.pk, visibility="everyone")
    services.prompt_share(user=admin_user, admin=True, prompt_id=prompt.pk, visibility="everyone")
    assert prompt in prompts_visible(user=UserFactory())


def test_commands_are_unique_per_owner_and_the_deployments_are_reserved(user, other_user):
    _create(user)
    with pytest.raises(PromptError, match="already have a prompt with the command /sum"):
        _create(user, name="Other")
    assert _create(other_user).command == "sum"  # another user's private command is no secret
    with pytest.raises(PromptError, match="/reformulate is reserved"):
        _create(user, command="/reformulate")
    with pytest.raises(PromptError, match="lowercase"):
        _create(user, command="Has Space")


def test_a_version_may_name_only_an_enabled_model(user):
    ModelConfigFactory(name="Small", enabled=True)
    ModelConfigFactory(name="Off", enabled=False)
    prompt = _create(user, model_name="Small", max_output_tokens=200)
    assert prompt.versions.get().model_name == "Small"
    with pytest.raises(PromptError, match="no model named 'Off'"):
        services.prompt_version_create(
            user=user, prompt_id=prompt.pk, template="x", model_name="Off"
        )


def test_the_picker_lists_visible_message_templates_by_command(user, other_user):
    PromptFactory(owner=user, command="summarise", name="Summary")
    PromptFactory(owner=user, command="translate", name="Make a summary in French")
    PromptFactory(owner=user, command="sumsystem", kind="system")
    PromptFactory(owner=other_user, command="sum-secret")
    assert [p.command for p in prompt_picker(user=user, query="sum")] == [
        "summarise",
        "translate",
    ]
    assert [p.command for p in prompt_picker(user=other_user, query="/sum")] == ["sum-secret"]


def test_export_and_import_round_trip_and_fast_forward(user, other_user):
    prompt = _create(user, kind="system", temperature="0.5")
    services.prompt_version_create(user=user, prompt_id=prompt.pk, template="v2 {{ x }}")
    services.prompt_label_move(user=user, prompt_id=prompt.pk, label="staging", number=1)
    data = prompt_export(user=user, prompt_id=prompt.pk)
    assert data["format"] == "tollgate.prompt/1"
    assert [v["number"] for v in data["versions"]] == [1, 2]
    assert data["labels"] == {"production": 2, "staging": 1}

    copy, added = services.prompt_import(user=other_user, data=data)
    assert added == 2 and copy.owner == other_user and copy.visibility == "private"
    assert [v.template for v in copy.versions.order_by("number")] == [
        "Summarise for {{ audience }}.",
        "v2 {{ x }}",
    ]
    assert {label.name: label.version.number for label in copy.labels.all()} == {
        "production": 2,
        "staging": 1,
    }

    # The same file again changes nothing; a file with one more version adds it.
    assert services.prompt_import(user=other_user, data=data)[1] == 0
    services.prompt_version_create(user=user, prompt_id=prompt.pk, template="v3")
    newer = prompt_export(user=user, prompt_id=prompt.pk)
    again, added = services.prompt_import(user=other_user, data=newer)
    assert (again.pk, added, again.versions.count()) == (copy.pk, 1, 3)
    assert _events("prompt.imported", copy)[-1] == {"command": "sum", "versions": 3, "added": 1}

    # A file whose history differs from the prompt's is refused, nothing written.
    newer["versions"][0]["template"] = "rewritten history"
    with pytest.raises(PromptError, match="Version 1 of your /sum differs"):
        services.prompt_import(user=other_user, data=newer)
    assert again.versions.count() == 3


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"format": "other"}, "Not a prompt file: format"),
        ({"versions": []}, "Not a prompt file: versions"),
        ({"versions": [{"number": 2, "template": "x"}]}, "numbered 1, 2, 3"),
        ({"versions": [{"number": 1, "template": "{{ x"}]}, "Version 1: The template"),
        ({"labels": {"production": 5}}, "does not have"),
    ],
)
def test_a_bad_prompt_file_is_refused(user, change, says):
    data = {
        "format": "tollgate.prompt/1",
        "name": "X",
        "command": "x",
        "kind": "template",
        "versions": [{"number": 1, "template": "ok"}],
        "labels": {"production": 1},
    } | change
    with pytest.raises(PromptError, match=says):
        services.prompt_import(user=user, data=data)
    assert not Prompt.objects.filter(owner=user).exists()
