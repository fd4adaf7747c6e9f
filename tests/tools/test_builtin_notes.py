from __future__ import annotations

import pytest

from tools.models import Note
from tools.registry import ToolError, registry

from .conftest import call

pytestmark = pytest.mark.django_db


def test_notes_crud(user):
    uid = user.pk
    assert call("notes.write", user_id=uid, key="shopping", value="milk") == {
        "key": "shopping",
        "created": True,
    }
    assert call("notes.write", user_id=uid, key="shopping", value="milk, eggs") == {
        "key": "shopping",
        "created": False,
    }
    call("notes.write", user_id=uid, key="todo", value="call mum")
    assert call("notes.read", user_id=uid, key="shopping")["value"] == "milk, eggs"
    listed = call("notes.list", user_id=uid)
    assert listed["count"] == 2
    assert [n["key"] for n in listed["notes"]] == ["shopping", "todo"]
    assert [n["key"] for n in call("notes.list", user_id=uid, prefix="to")["notes"]] == ["todo"]
    assert call("notes.delete", user_id=uid, key="todo") == {"key": "todo", "deleted": True}
    assert list(Note.objects.filter(user=user).values_list("key", flat=True)) == ["shopping"]
    with pytest.raises(ToolError, match="No note named 'todo'"):
        call("notes.read", user_id=uid, key="todo")
    with pytest.raises(ToolError, match="nothing was deleted"):
        call("notes.delete", user_id=uid, key="todo")


def test_notes_are_isolated_per_user(user, other_user):
    call("notes.write", user_id=user.pk, key="secret", value="mine")
    with pytest.raises(ToolError, match="No note named"):
        call("notes.read", user_id=other_user.pk, key="secret")
    assert call("notes.list", user_id=other_user.pk) == {
        "count": 0,
        "notes": [],
        "truncated": False,
    }
    with pytest.raises(ToolError):
        call("notes.delete", user_id=other_user.pk, key="secret")
    call("notes.write", user_id=other_user.pk, key="secret", value="theirs")
    assert call("notes.read", user_id=user.pk, key="secret")["value"] == "mine"
    assert call("notes.read", user_id=other_user.pk, key="secret")["value"] == "theirs"


def test_notes_hints():
    assert registry.get("notes.delete").destructive is True
    assert registry.get("notes.write").destructive is False
    assert registry.get("notes.read").read_only is True
    assert registry.get("notes.list").read_only is True
    for name in ("notes.list", "notes.read", "notes.write", "notes.delete"):
        assert registry.get(name).open_world is False
