"""Chains and reflection rounds on PostgreSQL, driven in process (``conversations.chains``).

Each part is advanced as a dispatched step would be (``drive``); the chain is told
that a part ended as ``runs.run_part_ended`` would tell it on commit (the test's
transaction never commits). The same flows with a real Celery worker, an approval
and a worker restart: ``test_chains_worker.py``.
"""

from __future__ import annotations

import pytest

from accounts.models import UsageRecord
from audit.models import AuditEvent
from conversations import chains, services
from conversations.engine import history_messages
from conversations.models import Message, Run
from tests.conversations.conftest import drive
from tests.factories import ChainFactory, ModelConfigFactory

pytestmark = pytest.mark.django_db


def run_chain(run: Run, *, limit: int = 20) -> Run:
    """Advance chain ``run``'s parts one after another until it ends or a part waits
    for a person."""
    for _ in range(limit):
        part = run.parts.order_by("-position").first()
        assert part is not None
        if not part.is_terminal:
            part = drive(part)
            if part.status == Run.Status.AWAITING_APPROVAL:
                run.refresh_from_db()
                return run
        chains.chain_part_ended(orchestrator_id=run.pk, kind=run.kind, part_id=part.pk)
        run.refresh_from_db()
        if run.is_terminal:
            return run
    raise AssertionError(f"chain {run.pk} still {run.status}")


def start(conversation, chain, content: str) -> Run:
    return services.message_send(
        user=conversation.owner, conversation_id=conversation.pk, content=content, chain_id=chain.pk
    )


def parts(run: Run) -> list[Run]:
    return list(run.parts.order_by("position"))


THIRD = "say: C-{{ previous_response }}|{{ steps[0].response }}|{{ steps[1].name }}"


def test_three_steps_pass_previous_response_and_earlier_steps(conversation):
    chain = ChainFactory(
        owner=conversation.owner,
        steps=[
            {"template": "say: A-{{ input }}"},
            {"template": "say: B-{{ previous_response }}"},
            {"template": THIRD},
        ],
    )
    run = start(conversation, chain, "x")
    assert (run.kind, run.status) == (Run.Kind.CHAIN, Run.Status.AWAITING_PARTS)
    run = run_chain(run)
    assert run.status == Run.Status.COMPLETED, run.error
    answers = [chains.part_answer(p) for p in parts(run)]
    assert answers == ["A-x", "B-A-x", "C-B-A-x|A-x|Step 2"]
    assert [p.position for p in parts(run)] == [0, 1, 2]
    # The chain's answer is one assistant message of the chain run: what later turns read.
    [final] = Message.objects.filter(run=run)
    assert final.content == "C-B-A-x|A-x|Step 2"
    later = history_messages(conversation=conversation)
    assert [m["content"] for m in later[1:]] == ["x", "C-B-A-x|A-x|Step 2"]
    # Each step's call read the conversation before the chain and its own prompt only.
    third = parts(run)[2]
    sent = history_messages(conversation=conversation, run=third)
    assert [m["content"] for m in sent[1:]] == ["say: C-B-A-x|A-x|Step 2", "C-B-A-x|A-x|Step 2"]
    # Charged per part, audited per move with the part and step.
    assert UsageRecord.objects.filter(run_id__in=[p.pk for p in parts(run)]).count() == 3
    moves = AuditEvent.objects.filter(action="run.awaiting_parts", target_id=str(run.pk))
    assert [(e.data["step"], e.data["part"]) for e in moves.order_by("id")] == [
        (n + 1, p.pk) for n, p in enumerate(parts(run))
    ]
    assert AuditEvent.objects.filter(action="run.completed", target_id=str(run.pk)).exists()
    calls = AuditEvent.objects.filter(action="llm.call").order_by("sequence")
    assert [(e.data["chain_run_id"], e.data["chain_step"], e.target_id) for e in calls] == [
        (run.pk, n + 1, str(p.pk)) for n, p in enumerate(parts(run))
    ]


def test_a_step_after_earlier_exchanges_reads_them_but_not_the_other_steps(conversation):
    first = services.message_send(user=conversation.owner, conversation_id=conversation.pk,
                                  content="say: earlier")  # fmt: skip
    drive(first)
    chain = ChainFactory(
        owner=conversation.owner,
        steps=[{"template": "say: one"}, {"template": "say: two {{ previous_response }}"}],
    )
    run = run_chain(start(conversation, chain, "question"))
    assert run.status == Run.Status.COMPLETED
    second = parts(run)[1]
    sent = history_messages(conversation=conversation, run=second)
    assert [m["content"] for m in sent[1:]] == [
        "say: earlier",
        "earlier",
        "say: two one",
        "two one",
    ]


def test_reflection_revises_then_passes(conversation):
    chain = ChainFactory(
        owner=conversation.owner,
        steps=[{"template": "say: draft {{ input }}", "max_rounds": 3,
                "judge_template": "Judge this answer to {{ input }}: {{ response }}"}],
    )  # fmt: skip
    run = run_chain(start(conversation, chain, "q"))
    assert run.status == Run.Status.COMPLETED, run.error
    roles = [
        (p.parameters["chain_part"]["role"], p.parameters["chain_part"]["round"])
        for p in parts(run)
    ]
    assert roles == [("step", 1), ("judge", 1), ("step", 2), ("judge", 2)]
    rounds = run.metadata["chain"]["rounds"]
    assert [r["verdict"] for r in rounds] == ["revise", "pass"]
    assert "PASS" in Message.objects.get(run=run).content


def test_reflection_stops_at_its_maximum_rounds(conversation):
    chain = ChainFactory(
        owner=conversation.owner,
        steps=[
            {"template": "say: STUBBORN {{ input }}", "max_rounds": 3,
             "judge_template": "Judge: {{ response }}"},
            {"template": "say: after {{ previous_response|length }}"},
        ],
    )  # fmt: skip
    run = run_chain(start(conversation, chain, "q"))
    assert run.status == Run.Status.COMPLETED, run.error
    info = [p.parameters["chain_part"] for p in parts(run)]
    # Three rounds, judged after the first two (each said revise); none after the last.
    assert [(i["step"], i["role"], i["round"]) for i in info] == [
        (0, "step", 1), (0, "judge", 1), (0, "step", 2), (0, "judge", 2), (0, "step", 3),
        (1, "step", 1),
    ]  # fmt: skip
    rounds = run.metadata["chain"]["rounds"]
    assert [r.get("verdict") for r in rounds] == ["revise", "revise", None, None]
    assert rounds[2]["stopped_at_max_rounds"] is True
    assert info[2]["feedback"] == "Still not right."
    # Every round and every judge call is its own costed model call.
    assert UsageRecord.objects.filter(run_id__in=[p.pk for p in parts(run)]).count() == 6


def test_a_judge_that_does_not_answer_a_verdict_fails_the_chain(conversation):
    chain = ChainFactory(
        owner=conversation.owner,
        steps=[{"template": "say: x", "max_rounds": 2, "judge_template": "say: not json"}],
    )
    run = start(conversation, chain, "q")
    # The judge's prompt carries the instruction (and "verdict"): the demo answers JSON.
    # Break it: judged answers are parsed, and a bad one fails the chain clearly.
    with pytest.raises(ValueError, match="JSON object"):
        chains.verdict_parse("no verdict here")
    with pytest.raises(ValueError, match="'maybe' is not one of"):
        chains.verdict_parse('```json\n{"verdict": "maybe", "feedback": ""}\n```')
    assert chains.verdict_parse('{"verdict": "pass", "feedback": ""}')["verdict"] == "pass"
    assert run_chain(run).status == Run.Status.COMPLETED


def test_a_failed_step_fails_the_chain_with_its_reason(conversation):
    chain = ChainFactory(
        owner=conversation.owner,
        steps=[{"template": "say: a"}, {"template": "{{ steps[5].response }}"}],
    )
    run = run_chain(start(conversation, chain, "q"))
    assert run.status == Run.Status.FAILED
    assert run.error.startswith("Step 2 (Step 2): A value is used in a way it does not allow")


def test_tools_are_offered_only_in_steps_that_allow_them(conversation):
    from conversations.toolphase import tools_offered
    from tools.services import tools_sync

    tools_sync()
    chain = ChainFactory(
        owner=conversation.owner,
        steps=[{"template": "{{ input }}", "tools_allowed": True}, {"template": "{{ input }}"}],
    )
    run = start(conversation, chain, "calculate 2*3")
    first = parts(run)[0]
    assert tools_offered(run=first)
    first.parameters["chain_part"]["tools"] = False
    assert tools_offered(run=first) is None


def test_stop_on_the_chain_stops_its_current_part(conversation):
    chain = ChainFactory(owner=conversation.owner, steps=[{"template": "a"}, {"template": "b"}])
    run = start(conversation, chain, "q")
    services.run_cancel(user=conversation.owner, run_id=run.pk)
    run.refresh_from_db()
    [part] = parts(run)
    assert (run.status, part.status) == (Run.Status.CANCELLED, Run.Status.CANCELLED)
    # Its end, told late, leaves the chain as it is.
    chains.chain_part_ended(orchestrator_id=run.pk, kind="chain", part_id=part.pk)
    run.refresh_from_db()
    assert run.status == Run.Status.CANCELLED and run.parts.count() == 1


def test_a_stopped_part_stops_the_chain(conversation):
    chain = ChainFactory(owner=conversation.owner, steps=[{"template": "a"}, {"template": "b"}])
    run = start(conversation, chain, "q")
    [part] = parts(run)
    services.run_cancel(user=conversation.owner, run_id=part.pk)
    chains.chain_part_ended(orchestrator_id=run.pk, kind="chain", part_id=part.pk)
    run.refresh_from_db()
    assert run.status == Run.Status.CANCELLED
    assert run.error == "Step 1 (Step 1) was stopped"


def test_a_chain_step_on_a_disabled_model_is_refused_before_anything_is_sent(conversation):
    ModelConfigFactory(name="Retired", enabled=False)
    chain = ChainFactory(
        owner=conversation.owner, steps=[{"template": "a", "model_name": "Retired"}]
    )
    with pytest.raises(services.ModelUnavailable, match="Retired"):
        start(conversation, chain, "q")
    assert not Message.objects.filter(conversation=conversation).exists()


def test_another_users_private_chain_cannot_be_run(conversation, other_user):
    chain = ChainFactory(owner=other_user)
    with pytest.raises(services.NotFound):
        start(conversation, chain, "q")
    assert not Run.objects.exists()


def test_the_built_in_chains_are_everyones(conversation):
    from prompts.models import Chain

    names = set(
        Chain.objects.filter(owner=None, visibility="everyone").values_list("name", flat=True)
    )
    assert {"Draft → critique → revise", "Answer → verify with another model"} <= names
    built_in = Chain.objects.get(name="Draft → critique → revise")
    run = run_chain(start(conversation, built_in, "say: hello"))
    assert run.status == Run.Status.COMPLETED
    assert [p.parameters["chain_part"]["name"] for p in parts(run)] == [
        "Draft",
        "Critique",
        "Revise",
    ]
    assert {p.model_config_id for p in parts(run)} == {conversation.model_config_id}


def test_an_exported_chain_keeps_its_answer_and_imports_as_one_exchange(conversation):
    import json

    from conversations.exports import conversation_export, conversation_import

    chain = ChainFactory(
        owner=conversation.owner,
        steps=[{"template": "say: A-{{ input }}"}, {"template": "say: B-{{ previous_response }}"}],
    )
    run = run_chain(start(conversation, chain, "x"))
    data = conversation_export(conversation=conversation)
    assert [r["id"] for r in data["runs"]] == [run.pk]
    assert [(m["role"], m["content"]) for m in data["messages"]] == [
        ("user", "x"), ("assistant", "B-A-x"),
    ]  # fmt: skip
    copy = conversation_import(user=conversation.owner, text=json.dumps(data))
    assert [m["content"] for m in history_messages(conversation=copy)[1:]] == ["x", "B-A-x"]


def test_deleting_a_chain_run_deletes_its_parts_tool_calls(conversation):
    from tests.factories import ToolInvocationFactory
    from tools.models import ToolInvocation

    chain = ChainFactory(owner=conversation.owner, steps=[{"template": "a"}])
    run = start(conversation, chain, "q")
    [part] = parts(run)
    ToolInvocationFactory(run=part)
    services.conversation_rows_delete(rows=Run.objects.filter(pk=run.pk))
    assert not Run.objects.filter(pk__in=[run.pk, part.pk]).exists()
    assert not ToolInvocation.objects.filter(run_id=part.pk).exists()


def test_the_sockets_send_frame_reads_the_picked_chain():
    from pydantic import ValidationError

    from conversations.consumers import MessageSendFrame

    def frame(chain: object) -> MessageSendFrame:
        return MessageSendFrame.model_validate(
            {"type": "message.send", "conversation_id": "3", "content": "hi", "chain_id": chain}
        )

    assert frame("").chain_id is None  # "a normal reply"
    assert frame("12").chain_id == 12
    with pytest.raises(ValidationError):
        frame("1 OR 1=1")
    assert (
        MessageSendFrame.model_validate(
            {"type": "message.send", "conversation_id": 3, "content": "hi"}
        ).chain_id
        is None
    )


def test_recovery_moves_on_a_chain_whose_part_ended_unheard_and_once_only(conversation):
    from datetime import timedelta

    from django.utils import timezone

    from conversations import runs

    chain = ChainFactory(
        owner=conversation.owner, steps=[{"template": "say: a"}, {"template": "say: b"}]
    )
    run = start(conversation, chain, "q")
    drive(parts(run)[0])  # its end is told on commit, which never comes here: lost
    Run.objects.filter(pk=run.pk).update(updated_at=timezone.now() - timedelta(minutes=5))
    assert run.pk in runs.runs_recover_stale()
    assert [p.position for p in parts(run)] == [0, 1]
    # Told again (a second beat, a duplicate): nothing more happens.
    chains.chain_part_ended(orchestrator_id=run.pk, kind="chain", part_id=parts(run)[0].pk)
    assert run.parts.count() == 2
