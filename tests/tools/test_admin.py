from __future__ import annotations

import pytest
from django.contrib.auth.models import Group
from django.urls import reverse

from tools.models import Note, Tool, ToolInvocation

from .conftest import approved_invocation

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_client(client, admin_user):
    client.force_login(admin_user)
    return client


def test_tool_changelist_and_enable_disable_actions(admin_client):
    url = reverse("admin:tools_tool_changelist")
    response = admin_client.get(url)
    assert response.status_code == 200
    assert b"notes.delete" in response.content
    http = Tool.objects.get(name="http.get")
    response = admin_client.post(
        url, {"action": "enable_tools", "_selected_action": [http.pk]}, follow=True
    )
    assert response.status_code == 200
    http.refresh_from_db()
    assert http.enabled is True
    admin_client.post(url, {"action": "disable_tools", "_selected_action": [http.pk]})
    http.refresh_from_db()
    assert http.enabled is False


def test_tool_change_form_assigns_groups_but_not_registry_fields(admin_client):
    staff = Group.objects.create(name="Staff")
    tool = Tool.objects.get(name="notes.delete")
    url = reverse("admin:tools_tool_change", args=[tool.pk])
    page = admin_client.get(url)
    assert page.status_code == 200
    assert b"JSON Schema" in page.content
    response = admin_client.post(
        url, {"enabled": "on", "groups": [staff.pk], "destructive": "", "name": "renamed"}
    )
    assert response.status_code == 302
    tool.refresh_from_db()
    assert list(tool.groups.all()) == [staff]
    assert tool.name == "notes.delete" and tool.destructive is True


def test_invocation_admin_is_read_only(admin_client, run):
    inv = approved_invocation(run, tool_name="time.now")
    changelist = admin_client.get(
        reverse("admin:tools_toolinvocation_changelist"), {"status": "approved"}
    )
    assert changelist.status_code == 200
    assert b"time.now" in changelist.content
    assert admin_client.get(reverse("admin:tools_toolinvocation_add")).status_code == 403
    url = reverse("admin:tools_toolinvocation_change", args=[inv.pk])
    assert admin_client.get(url).status_code == 200
    admin_client.post(url, {"status": "succeeded"})
    inv.refresh_from_db()
    assert inv.status == ToolInvocation.Status.APPROVED
    delete = reverse("admin:tools_toolinvocation_delete", args=[inv.pk])
    assert admin_client.post(delete, {"post": "yes"}).status_code == 403


def test_note_admin_lists_notes(admin_client, user):
    Note.objects.create(user=user, key="groceries", value="milk")
    response = admin_client.get(reverse("admin:tools_note_changelist"))
    assert response.status_code == 200
    assert b"groceries" in response.content
