"""The gate: rule precedence, conditions, defaults, untrusted hints, destructive tools."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Group

from approvals.conditions import condition_matches, parse_path
from approvals.models import ApprovalPolicy
from approvals.selectors import gate_evaluate
from approvals.services import gate_decide
from audit.models import AuditEvent
from tests.factories import UserFactory

CONV = 4242
WRITE = {"read_only": False, "destructive": False}
READ = {"read_only": True, "destructive": False}
DESTRUCTIVE = {"read_only": False, "destructive": True}

# Each rule: (subject, tool pattern, action[, (path, operator, value)]).
# Subjects: everyone, group (the user's), group2 (the user's second group),
# user, conv (the user in this conversation), and rules that must never apply:
# other_group, other_user, other_conv.
# Expected: (action, index of the winning rule or None for the default).
TABLE = [
    # subject specificity
    ("everyone only", [("everyone", "notes.write", "allow")], WRITE, ("allow", 0)),
    (
        "group beats everyone",
        [("everyone", "notes.write", "deny"), ("group", "notes.write", "allow")],
        WRITE,
        ("allow", 1),
    ),
    (
        "user beats group",
        [("group", "notes.write", "deny"), ("user", "notes.write", "allow")],
        WRITE,
        ("allow", 1),
    ),
    (
        "conversation beats user",
        [("user", "notes.write", "deny"), ("conv", "notes.write", "allow")],
        WRITE,
        ("allow", 1),
    ),
    (
        "conversation beats everything",
        [
            ("everyone", "notes.write", "deny"),
            ("group", "notes.write", "deny"),
            ("user", "notes.write", "ask"),
            ("conv", "notes.*", "allow"),
        ],
        WRITE,
        ("allow", 3),
    ),
    (
        "subject beats tool specificity",
        [("user", "notes.*", "allow"), ("group", "notes.write", "deny")],
        WRITE,
        ("allow", 0),
    ),
    # tool specificity
    (
        "exact beats glob",
        [("group", "notes.*", "deny"), ("group", "notes.write", "allow")],
        WRITE,
        ("allow", 1),
    ),
    (
        "longer glob prefix wins",
        [
            ("everyone", "*", "deny"),
            ("everyone", "notes.*", "ask"),
            ("everyone", "notes.w*", "allow"),
        ],
        WRITE,
        ("allow", 2),
    ),
    ("glob ? matches", [("everyone", "notes.writ?", "deny")], WRITE, ("deny", 0)),
    ("glob class matches", [("everyone", "notes.[vw]rite", "allow")], WRITE, ("allow", 0)),
    ("glob is case-sensitive", [("everyone", "Notes.*", "allow")], WRITE, ("ask", None)),
    ("non-matching pattern ignored", [("everyone", "calc.*", "deny")], WRITE, ("ask", None)),
    # equal specificity: deny > ask > allow
    (
        "deny beats allow",
        [("group", "notes.write", "allow"), ("group2", "notes.write", "deny")],
        WRITE,
        ("deny", 1),
    ),
    (
        "deny beats ask",
        [("everyone", "notes.*", "ask"), ("everyone", "notes.*", "deny")],
        WRITE,
        ("deny", 1),
    ),
    (
        "ask beats allow",
        [("user", "notes.write", "allow"), ("user", "notes.write", "ask")],
        WRITE,
        ("ask", 1),
    ),
    (
        "ask beats allow across groups",
        [("group2", "notes.*", "allow"), ("group", "notes.*", "ask")],
        WRITE,
        ("ask", 1),
    ),
    # rules for other people or places never apply
    ("other group ignored", [("other_group", "notes.write", "deny")], READ, ("allow", None)),
    ("other user ignored", [("other_user", "notes.write", "deny")], READ, ("allow", None)),
    ("other conversation ignored", [("other_conv", "notes.write", "allow")], WRITE, ("ask", None)),
    # conditions
    (
        "equals matches",
        [("everyone", "notes.write", "deny", ("key", "equals", "todo"))],
        WRITE,
        ("deny", 0),
    ),
    (
        "equals does not match: ignored",
        [("everyone", "notes.write", "deny", ("key", "equals", "other"))],
        WRITE,
        ("ask", None),
    ),
    (
        "in matches",
        [("everyone", "notes.write", "allow", ("key", "in", ["a", "todo"]))],
        WRITE,
        ("allow", 0),
    ),
    (
        "in does not match",
        [("everyone", "notes.write", "allow", ("key", "in", ["a", "b"]))],
        WRITE,
        ("ask", None),
    ),
    (
        "matches regex",
        [("everyone", "notes.write", "deny", ("meta.path", "matches", r"^/etc/"))],
        WRITE,
        ("deny", 0),
    ),
    (
        "regex does not match",
        [("everyone", "notes.write", "deny", ("meta.path", "matches", r"^/var/"))],
        WRITE,
        ("ask", None),
    ),
    (
        "list index path",
        [("everyone", "notes.write", "deny", ("tags[1]", "equals", "secret"))],
        WRITE,
        ("deny", 0),
    ),
    (
        "missing field never matches",
        [("everyone", "notes.write", "deny", ("nope.deeper", "equals", None))],
        WRITE,
        ("ask", None),
    ),
    (
        "1 is not true",
        [("everyone", "notes.write", "deny", ("count", "equals", True))],
        WRITE,
        ("ask", None),
    ),
    (
        "non-matching condition lets a weaker rule win",
        [
            ("user", "notes.write", "deny", ("key", "equals", "x")),
            ("everyone", "notes.write", "allow"),
        ],
        WRITE,
        ("allow", 1),
    ),
    # defaults
    ("no rule, read-only: allow", [], READ, ("allow", None)),
    ("no rule, other: ask", [], WRITE, ("ask", None)),
    ("no rule, destructive: ask", [], DESTRUCTIVE, ("ask", None)),
    ("no rule, no hints: ask", [], {}, ("ask", None)),
    (
        "disabled rule ignored",
        [("everyone", "notes.write", "deny", None, False)],
        READ,
        ("allow", None),
    ),
    # destructive tools and conversation-scoped allow
    (
        "conversation allow skipped for destructive",
        [("conv", "notes.write", "allow")],
        DESTRUCTIVE,
        ("ask", None),
    ),
    (
        "conversation allow skipped, user rule decides",
        [("user", "notes.write", "deny"), ("conv", "notes.write", "allow")],
        DESTRUCTIVE,
        ("deny", 0),
    ),
    (
        "conversation deny still applies to destructive",
        [("conv", "notes.write", "deny")],
        DESTRUCTIVE,
        ("deny", 0),
    ),
    (
        "user allow does apply to destructive",
        [("user", "notes.write", "allow")],
        DESTRUCTIVE,
        ("allow", 0),
    ),
    (
        "missing destructive hint counts as destructive",
        [("conv", "notes.write", "allow")],
        {"read_only": False},
        ("ask", None),
    ),
]

ARGS = {"key": "todo", "meta": {"path": "/etc/passwd"}, "tags": ["a", "secret"], "count": 1}


@pytest.fixture
def people(db):
    user = UserFactory()
    g1, g2, other = (Group.objects.create(name=n) for n in ("Staff", "Ops", "Others"))
    user.groups.add(g1, g2)
    return {
        "user": user,
        "group": g1,
        "group2": g2,
        "other_group": other,
        "other_user": UserFactory(),
    }


def _make_rule(people, subject, pattern, action, condition=None, enabled=True):
    kwargs = {"tool_pattern": pattern, "action": action, "enabled": enabled}
    if subject in {"group", "group2", "other_group"}:
        kwargs["group"] = people[subject]
    elif subject == "user":
        kwargs["user"] = people["user"]
    elif subject == "other_user":
        kwargs["user"] = people["other_user"]
    elif subject == "conv":
        kwargs.update(user=people["user"], conversation_id=CONV)
    elif subject == "other_conv":
        kwargs.update(user=people["user"], conversation_id=CONV + 1)
    if condition:
        kwargs.update(
            condition_path=condition[0],
            condition_operator=condition[1],
            condition_value=condition[2],
        )
    rule = ApprovalPolicy(**kwargs)
    rule.full_clean()
    rule.save()
    return rule


@pytest.mark.parametrize(
    ("rules", "hints", "expected"), [t[1:] for t in TABLE], ids=[t[0] for t in TABLE]
)
def test_precedence_table(people, rules, hints, expected):
    made = [_make_rule(people, *rule) for rule in rules]
    decision = gate_evaluate(
        user=people["user"],
        tool_name="notes.write",
        hints=hints,
        arguments=ARGS,
        conversation_id=CONV,
    )
    action, index = expected
    assert decision.action == action
    assert decision.policy_id == (made[index].pk if index is not None else None)
    if index is not None:
        assert f"rule #{made[index].pk}" in decision.explanation


def test_rule_order_does_not_matter(people):
    """The same rules created in the opposite order decide the same."""
    _make_rule(people, "group2", "notes.write", "deny")
    _make_rule(people, "group", "notes.write", "allow")
    decision = gate_evaluate(
        user=people["user"],
        tool_name="notes.write",
        hints=WRITE,
        arguments={},
        conversation_id=None,
    )
    assert decision.action == "deny"


def test_untrusted_read_only_hint_is_ignored(people):
    kwargs = {
        "user": people["user"],
        "tool_name": "mcp.read",
        "arguments": {},
        "conversation_id": None,
    }
    assert gate_evaluate(hints=READ, trusted_hints=True, **kwargs).action == "allow"
    untrusted = gate_evaluate(hints=READ, trusted_hints=False, **kwargs)
    assert untrusted.action == "ask"
    assert "untrusted" in untrusted.explanation


def test_untrusted_read_only_does_not_unlock_conversation_allow(people):
    _make_rule(people, "conv", "mcp.read", "allow")
    decision = gate_evaluate(
        user=people["user"],
        tool_name="mcp.read",
        hints={"read_only": True},
        arguments={},
        conversation_id=CONV,
        trusted_hints=False,
    )
    # Untrusted: not read-only, so destructive by MCP default; the conversation allow is skipped.
    assert decision.action == "ask"


def test_explanation_names_rule_group_and_tool(people):
    rule = _make_rule(people, "group", "notes.*", "ask")
    decision = gate_evaluate(
        user=people["user"],
        tool_name="notes.write",
        hints=WRITE,
        arguments={},
        conversation_id=None,
    )
    assert decision.explanation == f"asked because: rule #{rule.pk}, group Staff, tool notes.*"


def test_explanation_is_the_rules_description_when_it_has_one(people):
    """Issue 22, defect 7: users read "rule #2, everyone, tool code.*"."""
    rule = _make_rule(people, "group", "notes.*", "deny")
    rule.description = "  Notes are read-only\n during   the audit. "
    rule.save()
    decision = gate_evaluate(
        user=people["user"],
        tool_name="notes.write",
        hints=WRITE,
        arguments={},
        conversation_id=None,
    )
    assert decision.explanation == "denied because: Notes are read-only during the audit."
    assert decision.policy_id == rule.pk  # the rule itself is still recorded
    rule.description = "x" * 1000
    rule.save()
    long = gate_evaluate(
        user=people["user"],
        tool_name="notes.write",
        hints=WRITE,
        arguments={},
        conversation_id=None,
    )
    assert len(long.explanation) < 500 and long.explanation.endswith("…")


def test_expiry_and_approvers_come_from_the_rule(people, settings):
    settings.TOLLGATE_APPROVAL_EXPIRY_SECONDS = 99
    approvers = Group.objects.create(name="Approvers")
    rule = _make_rule(people, "everyone", "notes.*", "ask")
    decision = gate_evaluate(
        user=people["user"], tool_name="notes.x", hints=WRITE, arguments={}, conversation_id=None
    )
    assert decision.expires_after_seconds == 99
    assert decision.approver_group_id is None
    rule.expires_after_seconds = 60
    rule.approvers_group = approvers
    rule.save()
    decision = gate_evaluate(
        user=people["user"], tool_name="notes.x", hints=WRITE, arguments={}, conversation_id=None
    )
    assert (decision.expires_after_seconds, decision.approver_group_id) == (60, approvers.pk)


def test_gate_decide_audits_the_decision(people):
    rule = _make_rule(people, "user", "calc", "deny")
    decision = gate_decide(
        user=people["user"],
        tool_name="calc",
        hints=READ,
        arguments={"expr": "1+1"},
        conversation_id=CONV,
        invocation_id=77,
    )
    assert decision.action == "deny"
    event = AuditEvent.objects.get(action="gate.decided")
    assert (event.actor_id, event.target_type, event.target_id) == (
        people["user"].pk,
        "tool_invocation",
        "77",
    )
    assert event.data["policy_id"] == rule.pk
    assert event.data["action"] == "deny"


@pytest.mark.parametrize(
    ("path", "parts"),
    [
        ("a.b.c", ["a", "b", "c"]),
        ("$.a.b", ["a", "b"]),
        ("items[0].name", ["items", 0, "name"]),
        ("items.0", ["items", 0]),
        ('a["x.y"]', ["a", "x.y"]),
    ],
)
def test_parse_path(path, parts):
    assert parse_path(path) == parts


@pytest.mark.parametrize("path", ["", "$", "a..b", "a[", "a b"])
def test_parse_path_rejects_malformed(path):
    with pytest.raises(ValueError):
        parse_path(path)


def test_bad_regex_never_matches():
    assert not condition_matches(arguments={"a": "x"}, path="a", operator="matches", value="(")
