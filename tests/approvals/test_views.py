"""HTTP: the approvals page, one card, decisions (status codes), the badge, live pushes."""

from __future__ import annotations

import json

import pytest
from django.contrib.auth.models import Group
from django.core.exceptions import ValidationError

from approvals.models import ApprovalRequest
from approvals.services import ApprovalNotFound, approval_decide_from_payload
from audit.models import AuditEvent
from tests.factories import GroupFactory, UserFactory

HTMX = {"HTTP_HX_REQUEST": "true"}


def post_decide(client, approval, **data):
    data.setdefault("arguments_hash", approval.arguments_hash)
    return client.post(f"/approvals/{approval.pk}/decide", data, **HTMX)


def test_list_shows_own_and_filters(user_client, user, other_user, make_approval):
    mine = make_approval(user, tool_name="notes.write")
    calc = make_approval(user, tool_name="calc")
    theirs = make_approval(other_user, tool_name="notes.write")
    response = user_client.get("/approvals/")
    body = response.content.decode()
    assert response.status_code == 200
    assert f'id="approval-{mine.pk}"' in body
    assert f'id="approval-{calc.pk}"' in body
    assert f'id="approval-{theirs.pk}"' not in body
    assert f'href="/c/{mine.conversation_id}/"' in body
    filtered = user_client.get("/approvals/", {"tool": "calc"}).content.decode()
    assert f'id="approval-{calc.pk}"' in filtered
    assert f'id="approval-{mine.pk}"' not in filtered
    denied = user_client.get("/approvals/", {"status": "denied"}).content.decode()
    assert '<article id="approval-' not in denied
    assert 'id="approvals-empty"' in denied


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"status": "bogus" * 1000}, "status: Choose a status from the list."),
        ({"tool": "notes\x00"}, "tool: Null characters are not allowed."),
        ({"tool": "x" * 201}, "tool: Ensure this value has at most 200 characters"),
    ],
)
def test_filters_that_cannot_be_used_are_400_with_why(
    user_client, user, make_approval, params, message
):
    approval = make_approval(user)
    response = user_client.get("/approvals/", params)
    assert response.status_code == 400
    body = response.content.decode()
    assert f'<p class="error" role="alert">These filters cannot be used: {message}' in body
    assert "bogusbogus" not in body
    assert f'id="approval-{approval.pk}"' in body  # unfiltered
    assert user_client.get("/approvals/", {"page": "²"}).status_code == 200  # the first page


def test_list_query_count_does_not_grow(
    user_client, user, make_approval, django_assert_max_num_queries
):
    for _ in range(3):
        make_approval(user)
    with django_assert_max_num_queries(14) as few:
        user_client.get("/approvals/")
    for _ in range(6):
        make_approval(user)
    with django_assert_max_num_queries(len(few.captured_queries)):
        user_client.get("/approvals/")


def test_detail_and_404_for_other_users_approval(user_client, user, other_user, make_approval):
    mine = make_approval(user)
    theirs = make_approval(other_user)
    response = user_client.get(f"/approvals/{mine.pk}/", **HTMX)
    assert response.status_code == 200
    assert response.content.decode().lstrip().startswith(f'<article id="approval-{mine.pk}"')
    assert user_client.get(f"/approvals/{theirs.pk}/").status_code == 404
    assert post_decide(user_client, theirs, decision="approve").status_code == 404
    assert ApprovalRequest.objects.get(pk=theirs.pk).status == "pending"
    assert not AuditEvent.objects.filter(action="approval.decided").exists()


def test_anonymous_is_sent_to_sign_in(client, user, make_approval):
    approval = make_approval(user)
    assert client.get("/approvals/").status_code == 302
    response = client.post(f"/approvals/{approval.pk}/decide", {"decision": "approve"})
    assert response.status_code == 302
    assert ApprovalRequest.objects.get(pk=approval.pk).status == "pending"


def test_approve_over_http(user_client, user, make_approval, decided_handler):
    approval = make_approval(user)
    response = post_decide(user_client, approval, decision="approve", reason="ok")
    assert response.status_code == 200
    body = response.content.decode()
    assert f'id="approval-{approval.pk}"' in body
    assert "Approved" in body
    # The card only: the badge's count comes with the decision's push (every page).
    assert 'id="approval-badge"' not in body
    assert decided_handler == [(approval.pk, "approved")]
    event = AuditEvent.objects.get(action="approval.decided")
    assert event.ip == "127.0.0.1"


def test_decision_by_viewer_who_may_not_decide_is_403_and_audited(client, make_approval):
    requester = UserFactory()
    approvers = Group.objects.create(name="Approvers")
    approval = make_approval(requester, approver_group=approvers)
    client.force_login(requester)
    # The requester sees the card but a group decides it.
    assert client.get(f"/approvals/{approval.pk}/").status_code == 200
    response = post_decide(client, approval, decision="approve")
    assert response.status_code == 403
    assert "may not decide" in response.content.decode()
    assert ApprovalRequest.objects.get(pk=approval.pk).status == "pending"
    event = AuditEvent.objects.get(action="approval.forbidden")
    assert event.actor_id == requester.pk


def test_replayed_and_stale_decisions_are_409(user_client, user, make_approval):
    approval = make_approval(user, arguments={"key": "a"})
    other = make_approval(user, arguments={"key": "b"})
    response = post_decide(
        user_client, approval, decision="approve", arguments_hash=other.arguments_hash
    )
    assert response.status_code == 409
    assert "not the arguments" in response.content.decode()
    assert post_decide(user_client, approval, decision="deny").status_code == 200
    again = post_decide(user_client, approval, decision="approve")
    assert again.status_code == 409
    assert "already denied" in again.content.decode()
    assert ApprovalRequest.objects.get(pk=approval.pk).status == "denied"


def test_a_decision_that_lost_to_stop_or_expiry_is_409_and_says_what_happened(
    user_client, user, make_approval
):
    """Stop cancelled the request first, or its time ran out: the decision is told so."""
    from datetime import timedelta

    from django.utils import timezone

    from approvals.services import approvals_cancel_for_run

    stopped = make_approval(user)
    approvals_cancel_for_run(run_id=stopped.run_id, actor=user)
    response = post_decide(user_client, stopped, decision="approve")
    assert response.status_code == 409
    assert "This approval is already cancelled." in response.content.decode()

    late = make_approval(user)
    ApprovalRequest.objects.filter(pk=late.pk).update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )
    response = post_decide(user_client, late, decision="approve")
    assert response.status_code == 409
    assert "This approval expired before it was decided." in response.content.decode()
    assert ApprovalRequest.objects.get(pk=late.pk).status == "expired"
    again = post_decide(user_client, late, decision="deny")
    assert again.status_code == 409
    assert "This approval is already expired." in again.content.decode()


def test_bad_input_is_400_and_changes_nothing(user_client, user, make_approval):
    approval = make_approval(user)
    assert post_decide(user_client, approval, decision="maybe").status_code == 400
    assert (
        post_decide(user_client, approval, decision="approve", arguments_hash="x").status_code
        == 400
    )
    bad_json = post_decide(user_client, approval, decision="approve", edited_arguments="{nope")
    assert bad_json.status_code == 400
    assert "Not valid JSON" in bad_json.content.decode()
    assert ApprovalRequest.objects.get(pk=approval.pk).status == "pending"


@pytest.mark.parametrize(
    ("edited", "message"),
    [
        ('{"key": NaN}', "NaN and Infinity are not numbers JSON can hold"),
        ('{"key": Infinity}', "NaN and Infinity are not numbers JSON can hold"),
        ('{"key": -Infinity}', "NaN and Infinity are not numbers JSON can hold"),
        ('{"key": 1e999}', "a number is too large to hold"),
        ('{"key": "a\\u0000b"}', "Null characters are not allowed."),
        ('{"\\u0000": "b"}', "Null characters are not allowed."),
        ('{"key": "\\ud800"}', "Not valid JSON: unexpected end of hex escape"),
        ('{"key": ' + "[" * 90_000 + "]" * 90_000 + "}", "nested more than 32 levels deep"),
        ('{"a":' * 5000 + "1" + "}" * 5000, "nested more than 32 levels deep"),
        ("x" * 200_001, "at most 200000 characters"),
    ],
    ids=["nan", "inf", "-inf", "1e999", "nul", "nul-key", "surrogate", "deep", "deep-obj", "long"],
)
@pytest.mark.parametrize("decision", ["edit", "approve", "preview"])
def test_edited_arguments_that_cannot_be_stored_are_400(
    user_client, user, make_approval, edited, message, decision
):
    """The issue's examples: each is refused with a message, nothing reaches PostgreSQL."""
    approval = make_approval(user, arguments={"key": "a"})
    response = post_decide(user_client, approval, decision=decision, edited_arguments=edited)
    assert response.status_code == 400
    body = response.content.decode()
    assert message in body
    assert len(body) < 60_000  # the card, not the input echoed back
    approval.refresh_from_db()
    assert (approval.status, approval.edited_arguments) == ("pending", None)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("reason", "a\x00b", "Null characters are not allowed."),
        ("arguments_json", '{"key": NaN}', "NaN and Infinity"),
        ("arg__key", "a\x00b", "Null characters are not allowed."),
        ("decision", "x" * 5000, "Choose approve, deny, edit or preview."),
    ],
)
def test_other_decision_fields_are_checked_the_same_way(
    user_client, user, make_approval, field, value, message
):
    schemas = {"arg__key": {"type": "object", "properties": {"key": {"type": "string"}}}}
    approval = make_approval(user, arguments={"key": "a"}, schema=schemas.get(field, {}))
    data = {"decision": "edit" if field != "reason" else "deny", field: value}
    response = post_decide(user_client, approval, **data)
    assert response.status_code == 400
    assert message in response.content.decode()
    assert "x" * 100 not in response.content.decode()
    assert ApprovalRequest.objects.get(pk=approval.pk).status == "pending"


def test_edit_form_from_schema(user_client, user, make_approval):
    approval = make_approval(user, arguments={"key": "todo", "text": "milk", "tags": ["a"]})
    card = user_client.get(f"/approvals/{approval.pk}/", **HTMX).content.decode()
    for name in (
        "arg__key",
        "arg__text",
        "arg__priority",
        "arg__pinned",
        "arg__color",
        "arg__tags",
    ):
        assert f'name="{name}"' in card
    fields = {
        "arg__key": "todo",
        "arg__text": "oat milk",
        "arg__priority": "3",
        "arg__pinned": "on",
        "arg__color": json.dumps("green"),
        "arg__tags": '["a", "b"]',
    }
    preview = post_decide(user_client, approval, decision="preview", **fields)
    assert preview.status_code == 200
    assert "arguments-diff" in preview.content.decode()
    assert ApprovalRequest.objects.get(pk=approval.pk).status == "pending"
    invalid = post_decide(
        user_client, approval, decision="edit", **{**fields, "arg__priority": "-4"}
    )
    assert invalid.status_code == 400
    assert "priority" in invalid.content.decode()
    assert ApprovalRequest.objects.get(pk=approval.pk).status == "pending"
    done = post_decide(user_client, approval, decision="edit", **fields)
    assert done.status_code == 200
    approval.refresh_from_db()
    assert approval.edited_arguments == {
        "key": "todo",
        "text": "oat milk",
        "priority": 3,
        "pinned": True,
        "color": "green",
        "tags": ["a", "b"],
    }
    assert "arguments-diff" in done.content.decode()


def test_edit_without_simple_schema_uses_json_textarea(user_client, user, make_approval):
    approval = make_approval(user, arguments={"q": 1}, schema={})
    card = user_client.get(f"/approvals/{approval.pk}/", **HTMX).content.decode()
    assert 'name="arguments_json"' in card
    response = post_decide(user_client, approval, decision="edit", arguments_json='{"q": 2}')
    assert response.status_code == 200
    approval.refresh_from_db()
    assert approval.edited_arguments == {"q": 2}


def test_a_card_approved_with_edits_shows_the_arguments_that_ran_and_the_diff(
    user_client, user, make_approval
):
    """Issue 22, defect 3: the card's JSON block showed the request's arguments."""
    approval = make_approval(user, arguments={"q": 1}, schema={})
    response = post_decide(user_client, approval, decision="edit", arguments_json='{"q": 2}')
    assert response.status_code == 200
    card = user_client.get(f"/approvals/{approval.pk}/", **HTMX).content.decode()
    block = card.split('<pre class="json arguments"')[1].split("</pre>")[0]
    assert "&quot;q&quot;: 2" in block and "&quot;q&quot;: 1" not in block
    assert "Approved with edited arguments:" in card
    assert "arguments-diff" in card


def test_always_allow_hidden_for_destructive(user_client, user, make_approval):
    safe = make_approval(user)
    destructive = make_approval(
        user, tool_name="notes.delete", hints={"read_only": False, "destructive": True}
    )
    safe_card = user_client.get(f"/approvals/{safe.pk}/", **HTMX).content.decode()
    bad_card = user_client.get(f"/approvals/{destructive.pk}/", **HTMX).content.decode()
    assert 'name="always_allow"' in safe_card
    assert 'name="always_allow"' not in bad_card
    assert "destructive" in bad_card
    refused = post_decide(user_client, destructive, decision="approve", always_allow="1")
    assert refused.status_code == 403
    assert ApprovalRequest.objects.get(pk=destructive.pk).status == "pending"


def test_badge_on_any_page(user_client, user, make_approval):
    make_approval(user)
    make_approval(user)
    body = user_client.get("/").content.decode()
    assert 'id="approval-badge"' in body
    assert '<span class="count">2</span>' in body


def test_decide_from_payload(user, other_user, make_approval):
    approval = make_approval(user)
    with pytest.raises(ValidationError):
        approval_decide_from_payload(user=user, payload={"approval_id": "x"}, ip=None)
    with pytest.raises(ValidationError):
        approval_decide_from_payload(
            user=user, payload={"approval_id": approval.pk, "decision": "approve"}, ip=None
        )
    with pytest.raises(ApprovalNotFound):
        approval_decide_from_payload(
            user=other_user,
            payload={
                "approval_id": approval.pk,
                "decision": "approve",
                "arguments_hash": approval.arguments_hash,
            },
            ip=None,
        )
    result = approval_decide_from_payload(
        user=user,
        payload={
            "approval_id": approval.pk,
            "decision": "approve",
            "arguments_hash": approval.arguments_hash,
            "edited_arguments": json.dumps({"key": "todo", "text": "tea"}),
            "always_allow": False,
        },
        ip="10.0.0.1",
    )
    assert result.status == "approved"
    assert result.edited_arguments == {"key": "todo", "text": "tea"}


def test_card_and_badge_pushed_to_requester_and_approvers(
    make_approval, django_capture_on_commit_callbacks
):
    requester, approver, stranger = UserFactory(), UserFactory(), UserFactory()
    approvers = Group.objects.create(name="Approvers")
    approver.groups.add(approvers)
    from tests.listening import GroupListener

    listeners = {
        person.pk: GroupListener(f"user.{person.pk}") for person in (requester, approver, stranger)
    }
    with listeners[requester.pk], listeners[approver.pk], listeners[stranger.pk]:
        with django_capture_on_commit_callbacks(execute=True):
            approval = make_approval(requester, approver_group=approvers)
        for person, can_decide in ((requester, False), (approver, True)):
            message = listeners[person.pk].receive()
            assert message["type"] == "html.push"
            html = message["html"]
            assert f'hx-swap-oob="innerHTML:#approval-slot-{approval.invocation_id}"' in html
            assert 'id="approval-badge"' in html
            assert ('name="decision"' in html) is can_decide
        with django_capture_on_commit_callbacks(execute=True):
            approval_decide_from_payload(
                user=approver,
                payload={
                    "approval_id": approval.pk,
                    "decision": "deny",
                    "arguments_hash": approval.arguments_hash,
                    "reason": "no",
                },
                ip=None,
            )
        html = listeners[requester.pk].receive()["html"]
        assert f'<article id="approval-{approval.pk}"' in html
        assert 'hx-swap-oob="true"' in html
        assert "Denied" in html
        listeners[approver.pk].receive()
        with pytest.raises(TimeoutError):  # nothing for someone outside the approver group
            listeners[stranger.pk].receive(timeout=0.3)


@pytest.mark.parametrize("path", ["/approvals/", "/approvals/1/"])
def test_views_need_sign_in(client, db, path):
    assert client.get(path).status_code == 302


# --- Four eyes and several approvals on the card ---------------------------------


def _quorum(make_approval, **kwargs):
    """Rita asks; Ana and Bob (and Rita) are Approvers; four eyes, two approvals."""
    rita, ana, bob = UserFactory(name="Rita"), UserFactory(name="Ana"), UserFactory(name="Bob")
    group = GroupFactory(name="Approvers")
    for person in (rita, ana, bob):
        person.groups.add(group)
    approval = make_approval(
        rita, approver_group=group, four_eyes=True, approvals_required=2, **kwargs
    )
    return approval, rita, ana, bob


def _card(client, person, approval):
    client.force_login(person)
    return client.get(f"/approvals/{approval.pk}/", **HTMX).content.decode()


def test_card_shows_progress_and_buttons_only_to_those_who_may_still_vote(
    client, make_approval, decided_handler
):
    approval, rita, ana, bob = _quorum(make_approval)

    fresh = _card(client, ana, approval)
    assert "No approvals yet (0 of 2)" in fresh
    assert "May decide: anyone in Approvers but Rita" in fresh
    assert 'name="decision"' in fresh
    assert "Edit arguments" in fresh  # the first approver may still edit
    own = _card(client, rita, approval)
    assert 'name="decision"' not in own
    assert "Waiting for anyone in Approvers but Rita to decide." in own

    refused = post_decide(client, approval, decision="approve")  # Rita, still signed in
    assert refused.status_code == 403
    assert "You asked for this tool call; under this rule someone else must decide it." in (
        refused.content.decode()
    )

    client.force_login(ana)
    voted = post_decide(client, approval, decision="approve")
    assert voted.status_code == 200
    body = voted.content.decode()
    assert "Approved by Ana (1 of 2)" in body
    assert "You approved; waiting for 1 more approval from anyone in Approvers but Rita, Ana." in (
        body
    )
    assert 'name="decision"' not in body
    again = post_decide(client, approval, decision="approve")
    assert again.status_code == 409
    assert "You have already approved this request." in again.content.decode()

    bobs = _card(client, bob, approval)
    assert "Approved by Ana (1 of 2)" in bobs
    assert "May decide: anyone in Approvers but Rita, Ana" in bobs
    assert 'name="decision"' in bobs
    assert "Edit arguments" not in bobs  # Ana's approval is for these arguments
    assert decided_handler == []

    done = post_decide(client, approval, decision="approve")
    assert done.status_code == 200
    assert "Approved by Ana, Bob (2 of 2)" in done.content.decode()
    assert decided_handler == [(approval.pk, "approved")]


def test_card_after_an_edit_shows_and_binds_the_edited_arguments(client, make_approval):
    approval, _rita, ana, bob = _quorum(make_approval, arguments={"key": "todo", "text": "milk"})
    client.force_login(ana)
    response = post_decide(
        client, approval, decision="edit", arguments_json="", arg__key="todo", arg__text="tea"
    )
    assert response.status_code == 200
    approval.refresh_from_db()
    bobs = _card(client, bob, approval)
    assert f'data-arguments-hash="{approval.effective_arguments_hash}"' in bobs
    assert f'value="{approval.effective_arguments_hash}"' in bobs
    assert approval.effective_arguments_hash != approval.arguments_hash
    assert "Edited by Ana when approving" in bobs
    shown = bobs.split('class="json arguments"')[1].split("</pre>")[0]
    assert "&quot;text&quot;: &quot;tea&quot;" in shown
    stale = post_decide(client, approval, decision="approve")  # the hash as first asked
    assert stale.status_code == 409
    done = post_decide(
        client, approval, decision="approve", arguments_hash=approval.effective_arguments_hash
    )
    assert done.status_code == 200
    approval.refresh_from_db()
    assert approval.status == "approved"
    assert approval.effective_arguments == {"key": "todo", "text": "tea"}


def test_each_vote_is_pushed_to_every_recipient(make_approval, django_capture_on_commit_callbacks):
    from tests.listening import GroupListener

    approval, rita, ana, bob = _quorum(make_approval)
    listeners = {p.pk: GroupListener(f"user.{p.pk}") for p in (rita, ana, bob)}
    with listeners[rita.pk], listeners[ana.pk], listeners[bob.pk]:
        with django_capture_on_commit_callbacks(execute=True):
            approval_decide_from_payload(
                user=ana,
                payload={
                    "approval_id": approval.pk,
                    "decision": "approve",
                    "arguments_hash": approval.arguments_hash,
                },
                ip=None,
            )
        for person, may_vote in ((rita, False), (ana, False), (bob, True)):
            html = listeners[person.pk].receive()["html"]
            assert f'<article id="approval-{approval.pk}"' in html
            assert "Approved by Ana (1 of 2)" in html
            assert ('name="decision"' in html) is may_vote
            badge = html.split('id="approval-badge"')[1].split("</a>")[0]
            assert ('<span class="count">1</span>' in badge) is may_vote


def test_list_query_count_does_not_grow_with_votes(
    client, make_approval, django_assert_max_num_queries
):
    approval, _rita, ana, bob = _quorum(make_approval)
    approval_decide_from_payload(
        user=ana,
        payload={
            "approval_id": approval.pk,
            "decision": "approve",
            "arguments_hash": approval.arguments_hash,
        },
        ip=None,
    )
    client.force_login(bob)
    with django_assert_max_num_queries(16) as few:
        body = client.get("/approvals/").content.decode()
    assert "Approved by Ana (1 of 2)" in body
    for _ in range(4):
        more = make_approval(
            UserFactory(), approver_group=approval.approver_group, approvals_required=2
        )
        approval_decide_from_payload(
            user=ana,
            payload={
                "approval_id": more.pk,
                "decision": "approve",
                "arguments_hash": more.arguments_hash,
            },
            ip=None,
        )
    with django_assert_max_num_queries(len(few.captured_queries)):
        assert client.get("/approvals/").content.decode().count("Approved by Ana (1 of 2)") == 5
