"""Admin for the gate: policy changes are audited and validated; requests are read-only."""

from __future__ import annotations

import pytest
from django.contrib.admin.sites import site
from django.test import RequestFactory

from approvals.models import ApprovalPolicy, ApprovalRequest
from audit.models import AuditEvent
from audit.selectors import audit_verify
from tests.factories import GroupFactory, UserFactory


def test_admin_is_read_only_for_requests(admin_user):
    request = RequestFactory().get("/admin/")
    request.user = admin_user
    model_admin = next(a for m, a in site._registry.items() if m is ApprovalRequest)
    assert not model_admin.has_add_permission(request)
    assert not model_admin.has_change_permission(request)
    assert not model_admin.has_delete_permission(request)
    assert model_admin.has_view_permission(request)


def test_policy_admin_changes_are_audited(admin_user, client):
    client.force_login(admin_user)
    add = client.post(
        "/admin/approvals/approvalpolicy/add/",
        {
            "tool_pattern": "notes.*",
            "action": "ask",
            "enabled": "on",
            "condition_value": "null",
            "approvals_required": 1,  # the form's initial value
        },
    )
    assert add.status_code == 302, add.content.decode()[:2000]
    policy = ApprovalPolicy.objects.get()
    assert policy.created_by == admin_user
    client.post(
        f"/admin/approvals/approvalpolicy/{policy.pk}/change/",
        {
            "tool_pattern": "notes.*",
            "action": "deny",
            "enabled": "on",
            "condition_value": "null",
            "approvals_required": 1,
        },
    )
    client.post(f"/admin/approvals/approvalpolicy/{policy.pk}/delete/", {"post": "yes"})
    assert not ApprovalPolicy.objects.exists()
    events = list(AuditEvent.objects.filter(action="policy.changed").order_by("sequence"))
    assert [e.data["operation"] for e in events] == ["created", "updated", "deleted"]
    assert events[1].data["diff"] == [
        {"key": "action", "op": "changed", "old": "ask", "new": "deny"}
    ]
    assert all(e.actor_id == admin_user.pk and e.target_id == str(policy.pk) for e in events)
    assert audit_verify().ok


@pytest.mark.parametrize(
    ("fields", "error_field"),
    [
        ({"tool_pattern": "notes.*", "action": "ask", "user": "U", "group": "G"}, "group"),
        ({"tool_pattern": "", "action": "ask"}, "tool_pattern"),
        ({"tool_pattern": "notes[.*", "action": "ask"}, "tool_pattern"),
        ({"tool_pattern": "a b", "action": "ask"}, "tool_pattern"),
        (
            {
                "tool_pattern": "x",
                "action": "deny",
                "condition_path": "p",
                "condition_operator": "matches",
                "condition_value": "(",
            },
            "condition_value",
        ),
        (
            {
                "tool_pattern": "x",
                "action": "deny",
                "condition_path": "p",
                "condition_operator": "in",
                "condition_value": "a",
            },
            "condition_value",
        ),
        ({"tool_pattern": "x", "action": "deny", "condition_path": "a..b"}, "condition_path"),
        ({"tool_pattern": "x", "action": "allow", "conversation_id": 5}, "user"),
    ],
)
def test_policy_clean_rejects_bad_rules(db, fields, error_field):
    from django.contrib.auth.models import Group
    from django.core.exceptions import ValidationError

    if fields.get("user") == "U":
        fields = {**fields, "user": UserFactory(), "group": Group.objects.create(name="G")}
    with pytest.raises(ValidationError) as info:
        ApprovalPolicy(**fields).full_clean()
    assert error_field in info.value.message_dict


@pytest.mark.parametrize(
    ("fields", "error_field", "words"),
    [
        ({"four_eyes": True}, "four_eyes", "needs an approvers group"),
        ({"approvals_required": 2}, "approvals_required", "need an approvers group"),
        ({"approvals_required": 0}, "approvals_required", "greater than or equal to 1"),
        ({"approvals_required": 11}, "approvals_required", "less than or equal to 10"),
    ],
)
def test_policy_clean_rejects_quorums_nobody_can_meet(db, fields, error_field, words):
    from django.core.exceptions import ValidationError

    with pytest.raises(ValidationError) as info:
        ApprovalPolicy(tool_pattern="notes.*", action="ask", **fields).full_clean()
    assert words in " ".join(info.value.message_dict[error_field])


def test_policy_clean_accepts_four_eyes_and_quorum_with_approvers(db):
    group = GroupFactory()
    ApprovalPolicy(
        tool_pattern="notes.*",
        action="ask",
        approvers_group=group,
        four_eyes=True,
        approvals_required=10,
    ).full_clean()


def test_policy_admin_form_offers_and_checks_the_options(admin_user, client):
    client.force_login(admin_user)
    form = client.get("/admin/approvals/approvalpolicy/add/").content.decode()
    assert 'name="four_eyes"' in form
    assert 'name="approvals_required"' in form
    assert "The requester may never decide their own request" in form
    base = {"tool_pattern": "notes.*", "action": "ask", "enabled": "on", "condition_value": "null"}
    refused = client.post(
        "/admin/approvals/approvalpolicy/add/", {**base, "four_eyes": "on", "approvals_required": 1}
    )
    assert refused.status_code == 200
    assert "Four eyes needs an approvers group" in refused.content.decode()
    assert not ApprovalPolicy.objects.exists()
    group = GroupFactory(name="Approvers")
    added = client.post(
        "/admin/approvals/approvalpolicy/add/",
        {**base, "four_eyes": "on", "approvals_required": 2, "approvers_group": group.pk},
    )
    assert added.status_code == 302, added.content.decode()[:2000]
    policy = ApprovalPolicy.objects.get()
    assert (policy.four_eyes, policy.approvals_required) == (True, 2)
    event = AuditEvent.objects.get(action="policy.changed")
    assert (event.data["after"]["four_eyes"], event.data["after"]["approvals_required"]) == (
        True,
        2,
    )


def test_request_admin_shows_the_votes(admin_user, client, make_approval):
    from approvals.services import approval_decide

    ana = UserFactory(name="Ana Approver")
    group = GroupFactory(name="Approvers")
    ana.groups.add(group)
    approval = make_approval(UserFactory(), approver_group=group, approvals_required=2)
    approval_decide(
        approval_id=approval.pk,
        actor=ana,
        approve=True,
        arguments_hash=approval.arguments_hash,
        reason="checked the path",
    )
    client.force_login(admin_user)
    page = client.get(f"/admin/approvals/approvalrequest/{approval.pk}/change/")
    assert page.status_code == 200
    body = page.content.decode()
    assert "checked the path" in body
    assert ana.email in body
    assert 'name="votes-0-reason"' not in body  # shown, not editable
