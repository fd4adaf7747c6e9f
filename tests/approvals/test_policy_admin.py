"""Admin for the gate: policy changes are audited and validated; requests are read-only."""

from __future__ import annotations

import pytest
from django.contrib.admin.sites import site
from django.test import RequestFactory

from approvals.models import ApprovalPolicy, ApprovalRequest
from audit.models import AuditEvent
from audit.selectors import audit_verify
from tests.factories import UserFactory


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
        {"tool_pattern": "notes.*", "action": "ask", "enabled": "on", "condition_value": "null"},
    )
    assert add.status_code == 302, add.content.decode()[:2000]
    policy = ApprovalPolicy.objects.get()
    assert policy.created_by == admin_user
    client.post(
        f"/admin/approvals/approvalpolicy/{policy.pk}/change/",
        {"tool_pattern": "notes.*", "action": "deny", "enabled": "on", "condition_value": "null"},
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
