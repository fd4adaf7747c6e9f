from __future__ import annotations

import pytest
from django.contrib.auth.models import AnonymousUser, Group
from django.core.management import call_command

from tests.factories import UserFactory
from tools.models import Tool
from tools.offered import tools_offered_cache_clear
from tools.registry import registry
from tools.selectors import tool_get_for_user, tools_for_user, tools_offered_for_user
from tools.services import NOT_REGISTERED, tools_sync

pytestmark = pytest.mark.django_db

BUILTINS_ON = [
    "calc.evaluate",
    "notes.delete",
    "notes.list",
    "notes.read",
    "notes.write",
    "time.now",
]


def _names(user):
    return [spec.name for spec in tools_for_user(user=user)]


def test_builtins_are_synced_and_http_get_starts_disabled():
    rows = {t.name: t for t in Tool.objects.all()}
    assert set(BUILTINS_ON) | {"http.get"} <= set(rows)
    assert rows["http.get"].enabled is False
    assert all(rows[name].enabled for name in BUILTINS_ON)
    delete = rows["notes.delete"]
    assert (delete.destructive, delete.read_only, delete.open_world) == (True, False, False)
    assert rows["time.now"].description == registry.get("time.now").description


def test_tools_for_user_filters_by_enabled_and_groups(user, other_user):
    assert [n for n in _names(user) if n in [*BUILTINS_ON, "http.get"]] == BUILTINS_ON
    staff = Group.objects.create(name="Staff")
    interns = Group.objects.create(name="Interns")
    Tool.objects.get(name="notes.delete").groups.add(staff, interns)
    Tool.objects.filter(name="calc.evaluate").update(enabled=False)
    Tool.objects.filter(name="http.get").update(enabled=True)
    Tool.objects.get(name="http.get").groups.add(staff)
    user.groups.add(staff)
    other_user.groups.add(interns)

    mine = _names(user)
    theirs = _names(other_user)
    assert "calc.evaluate" not in mine and "calc.evaluate" not in theirs
    assert "notes.delete" in mine and "notes.delete" in theirs
    assert "http.get" in mine and "http.get" not in theirs
    outsider = UserFactory()
    assert "notes.delete" not in _names(outsider)
    assert "notes.read" in _names(outsider)
    assert _names(outsider) == sorted(_names(outsider))

    assert tool_get_for_user(user=user, name="http.get") is registry.get("http.get")
    assert tool_get_for_user(user=other_user, name="http.get") is None
    assert tool_get_for_user(user=user, name="nope") is None


def test_unavailable_inactive_and_anonymous(user):
    Tool.objects.filter(name="time.now").update(unavailable_reason="server down")
    assert "time.now" not in _names(user)
    assert tools_for_user(user=AnonymousUser()) == []
    user.is_active = False
    user.save()
    assert tools_for_user(user=user) == []


def test_tools_for_user_is_two_queries_whatever_the_number_of_groups(
    user, django_assert_num_queries
):
    for i in range(5):
        group = Group.objects.create(name=f"g{i}")
        user.groups.add(group)
        Tool.objects.get(name="notes.delete").groups.add(group)
    tools_for_user(user=user)  # MCP registry state loaded once
    # One for the tool rows, one for the MCP servers' change stamps (mcp_registry_ensure).
    with django_assert_num_queries(2):
        tools_for_user(user=user)


def _offered(user):
    return {spec.name for spec in tools_offered_for_user(user=user)}


def test_tools_offered_are_reused_then_expire(user, django_assert_num_queries, monkeypatch):
    import tools.selectors as selectors

    tools_offered_cache_clear()
    first = _offered(user)
    with django_assert_num_queries(0):
        assert _offered(user) == first
    # A change another process made (no signal here) shows once the entry expires.
    Tool.objects.filter(name="time.now").update(enabled=False)
    assert "time.now" in _offered(user)
    monkeypatch.setattr(selectors, "OFFERED_CACHE_SECONDS", 0)
    tools_offered_cache_clear()
    _offered(user)
    assert "time.now" not in _offered(user)


def test_changes_in_this_process_clear_the_tools_offered(user):
    tools_offered_cache_clear()
    assert "notes.delete" in _offered(user)
    staff = Group.objects.create(name="Staff")
    tool = Tool.objects.get(name="notes.delete")
    tool.groups.add(staff)  # m2m: only members of Staff now
    assert "notes.delete" not in _offered(user)
    user.groups.add(staff)  # the user joins it
    assert "notes.delete" in _offered(user)
    tool.enabled = False
    tool.save()  # a row saved
    assert "notes.delete" not in _offered(user)
    from tools.services import tools_set_enabled

    tools_set_enabled(names=["notes.delete"], enabled=True, actor=None)  # a bulk update
    assert "notes.delete" in _offered(user)
    spec = registry.get("notes.read")
    registry.unregister("notes.read")  # the registry changed (no row changed)
    try:
        assert "notes.read" not in _offered(user)
    finally:
        registry.register(spec)
    assert "notes.read" in _offered(user)


def test_sync_keeps_admin_choices_and_marks_removed_builtins(make_tool):
    staff = Group.objects.create(name="Staff")
    http = Tool.objects.get(name="http.get")
    http.enabled = True
    http.save()
    http.groups.add(staff)
    Tool.objects.filter(name="time.now").update(enabled=False, description="stale")

    tools_sync()
    http.refresh_from_db()
    assert http.enabled is True
    assert list(http.groups.all()) == [staff]
    time_now = Tool.objects.get(name="time.now")
    assert time_now.enabled is False
    assert time_now.description == registry.get("time.now").description

    def gone() -> str:
        return ""

    make_tool(gone, name="t.gone", enabled_by_default=False)
    assert Tool.objects.get(name="t.gone").enabled is False
    registry.unregister("t.gone")
    tools_sync()
    assert Tool.objects.get(name="t.gone").unavailable_reason == NOT_REGISTERED
    make_tool(gone, name="t.gone")
    assert Tool.objects.get(name="t.gone").unavailable_reason == ""

    Tool.objects.create(name="mcp.thing", source="mcp:srv")
    tools_sync()
    assert Tool.objects.get(name="mcp.thing").unavailable_reason == ""  # not ours to judge


def test_tools_sync_command():
    Tool.objects.all().delete()
    call_command("tools_sync", stdout=open("/dev/null", "w"))  # noqa: SIM115
    assert Tool.objects.filter(name__in=BUILTINS_ON).count() == len(BUILTINS_ON)
    assert Tool.objects.get(name="http.get").enabled is False
