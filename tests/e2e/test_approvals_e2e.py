"""The approval gate in a real browser: approve, deny, edit, the badge, isolation, a dead worker."""

from __future__ import annotations

import json
import re
from decimal import Decimal

import pytest
from playwright.sync_api import expect

from tests.e2e.conftest import (
    ROOT,
    approval_card,
    chat_new,
    chat_send,
    expect_run_completed,
    sign_up,
    unique_email,
)

pytestmark = pytest.mark.e2e

SCREENSHOTS = ROOT / "docs" / "screenshots"

# Set before an action; still there afterwards only if the page never reloaded.
MARK_PAGE = "() => { window.__sameDocument = true; }"
SAME_PAGE = "() => window.__sameDocument === true"


def _invocation(stack, run_id: int) -> dict:
    rows = stack.sql(
        "SELECT id, tool_name, status, arguments_requested, arguments_executed, attempts"
        " FROM tools_toolinvocation WHERE run_id = %s ORDER BY id",
        (run_id,),
    )
    assert len(rows) == 1, rows
    keys = ("id", "tool_name", "status", "requested", "executed", "attempts")
    return dict(zip(keys, rows[0], strict=True))


def _approval(stack, invocation_id: int) -> dict:
    rows = stack.sql(
        "SELECT id, status, reason, decided_by_id, requester_id, edited_arguments"
        " FROM approvals_approvalrequest WHERE invocation_id = %s",
        (invocation_id,),
    )
    assert len(rows) == 1, rows
    keys = ("id", "status", "reason", "decided_by", "requester", "edited")
    return dict(zip(keys, rows[0], strict=True))


def _audit(stack, action: str, target_type: str, target_id: int) -> list[tuple]:
    return stack.sql(
        "SELECT actor_id, data FROM audit_auditevent"
        " WHERE action = %s AND target_type = %s AND target_id = %s ORDER BY sequence",
        (action, target_type, str(target_id)),
    )


def _tool_outputs(stack, run_id: int) -> list[str]:
    return [
        content
        for (content,) in stack.sql(
            "SELECT content FROM conversations_message WHERE run_id = %s AND role = 'tool'"
            " ORDER BY id",
            (run_id,),
        )
    ]


def _user_id(stack, email: str) -> int:
    return stack.sql("SELECT id FROM accounts_user WHERE email = %s", (email,))[0][0]


def _ask(page, text: str):
    """Send ``text`` and wait for its approval card to be pushed into the chat."""
    page.evaluate(MARK_PAGE)
    run_id, _run = chat_send(page, text)
    card = approval_card(page, run_id)
    expect(card).to_be_visible(timeout=30_000)
    expect(card.locator(".status-badge")).to_have_text("Pending")
    expect(page.locator(f"#run-{run_id}-status")).to_contain_text("Waiting for approval")
    assert page.evaluate(SAME_PAGE), "the card came with a reload"
    return run_id, card


def test_approve_runs_the_tool_and_the_answer_streams_in(new_page, stack):
    page = new_page()
    email = unique_email("approve")
    sign_up(page, email)
    chat_new(page)
    run_id, card = _ask(page, "remember that the meeting is on Friday")
    expect(card.locator(".tool")).to_have_text("notes.write")
    expect(card.locator(".explanation")).not_to_be_empty()
    expect(card.locator("pre.arguments")).to_contain_text('"value": "the meeting is on Friday"')
    expect(page.locator("#approval-badge .count")).to_have_text("1")

    card.get_by_role("button", name="Approve", exact=True).click()

    expect(card.locator(".status-badge")).to_have_text("Approved")
    run = page.locator(f"#run-{run_id}")
    expect(run.locator(".step-output")).to_contain_text('"created": true', timeout=30_000)
    answer = run.locator(".msg-assistant.msg-complete").last
    expect(answer).to_contain_text("Done — the tool said:", timeout=30_000)
    expect_run_completed(page, run_id)
    expect(page.locator("#approval-badge .count")).to_have_count(0)
    assert page.evaluate(SAME_PAGE)

    user_id = _user_id(stack, email)
    invocation = _invocation(stack, run_id)
    assert invocation["status"] == "succeeded"
    assert invocation["attempts"] == 1
    assert stack.sql(
        "SELECT value FROM tools_note WHERE user_id = %s AND key = 'meeting'", (user_id,)
    ) == [("the meeting is on Friday",)]
    approval = _approval(stack, invocation["id"])
    assert (approval["status"], approval["decided_by"]) == ("approved", user_id)
    # The audit trail has the decision, by this user, for these arguments.
    decided = _audit(stack, "approval.decided", "approval_request", approval["id"])
    assert len(decided) == 1
    actor, data = decided[0]
    assert actor == user_id
    assert data["decision"] == "approved"
    assert data["tool"] == "notes.write"
    assert data["edited"] is False
    assert len(_audit(stack, "tool.executed", "tool_invocation", invocation["id"])) == 1
    verify = stack.manage("audit_verify")
    assert "ok" in (verify.stdout + verify.stderr).lower()


def test_deny_with_a_reason_is_acknowledged_by_the_model(new_page, stack):
    page = new_page()
    sign_up(page, unique_email("deny"))
    chat_new(page)
    run_id, card = _ask(page, "forget the meeting")
    expect(card.locator(".tool")).to_have_text("notes.delete")
    expect(card.locator(".badge.hint.danger")).to_have_text("destructive")

    card.locator("input[name=reason]").fill("I still need that note")
    card.get_by_role("button", name="Deny", exact=True).click()

    expect(card.locator(".status-badge")).to_have_text("Denied")
    expect(card.locator(".outcome")).to_contain_text("I still need that note")
    answer = page.locator(f"#run-{run_id} .msg-assistant.msg-complete").last
    expect(answer).to_contain_text(
        "I could not do that: the tool call was denied — the reason given was"
        " “I still need that note”.",
        timeout=30_000,
    )
    expect_run_completed(page, run_id)

    invocation = _invocation(stack, run_id)
    assert invocation["status"] == "denied"
    assert invocation["attempts"] == 0  # never executed
    approval = _approval(stack, invocation["id"])
    assert (approval["status"], approval["reason"]) == ("denied", "I still need that note")
    ((_, data),) = _audit(stack, "approval.decided", "approval_request", approval["id"])
    assert (data["decision"], data["reason"]) == ("denied", "I still need that note")


def test_edit_arguments_then_approve_runs_the_edited_call(new_page, stack):
    page = new_page()
    sign_up(page, unique_email("edit"))
    chat_new(page)
    run_id, card = _ask(page, "run python: print(2 + 2)")
    expect(card.locator(".code-arguments")).to_contain_text("print(2 + 2)")

    card.locator("details.edit-arguments summary").click()
    card.locator("textarea[name=arg__code]").fill("print(6 * 7)")
    card.get_by_role("button", name="Show changes").click()
    expect(card.locator("details.edit-arguments")).to_contain_text("print(6 * 7)")
    card.get_by_role("button", name="Approve with these arguments").click()

    expect(card.locator(".status-badge")).to_have_text("Approved")
    expect(card).to_contain_text("Approved with edited arguments")
    # What ran, not what was asked (issue 22, defect 3); the diff stays.
    expect(card.locator("pre.json.arguments")).to_contain_text("print(6 * 7)")
    expect(card.locator("pre.json.arguments")).not_to_contain_text("print(2 + 2)")
    expect(card.locator(".arguments-diff")).to_contain_text("print(2 + 2)")
    run = page.locator(f"#run-{run_id}")
    output = run.locator(".step-output")
    expect(output).to_contain_text('"stdout": "42\\n"', timeout=30_000)
    expect(run.locator(".msg-assistant.msg-complete").last).to_contain_text("42", timeout=30_000)
    expect_run_completed(page, run_id)
    assert '"stdout": "4\\n"' not in output.text_content()

    # One compact step, where the call was made, before the answer (issue 22,
    # defects 3, 5 and 6): the tool's name, the arguments it ran with, its output.
    step = run.locator(".tool-step")
    expect(step).to_have_count(1)
    expect(step.locator("summary")).to_contain_text("code.python")
    expect(step.locator("summary")).to_contain_text("Succeeded")
    expect(step.locator(".step-arguments")).to_be_hidden()  # folded
    step.locator("summary").click()
    expect(step.locator(".step-arguments")).to_contain_text("print(6 * 7)")
    expect(step.locator(".step-arguments")).not_to_contain_text("print(2 + 2)")
    expect(step).to_contain_text("Arguments it ran with (edited by an approver)")
    assert "code__python" not in run.text_content()
    assert "Tool call" not in run.text_content()
    order = run.evaluate(
        """(run) => Array.from(run.querySelectorAll(".msg-assistant, .tool-step"))
             .filter((e) => e.offsetParent !== null || e.matches(".tool-step"))
             .map((e) => e.matches(".tool-step") ? "step" : "answer")"""
    )
    assert order == ["step", "answer"], order

    invocation = _invocation(stack, run_id)
    assert invocation["requested"] == {"code": "print(2 + 2)"}
    assert invocation["executed"] == {"code": "print(6 * 7)"}
    assert invocation["status"] == "succeeded"
    approval = _approval(stack, invocation["id"])
    assert approval["edited"] == {"code": "print(6 * 7)"}
    ((_, data),) = _audit(stack, "approval.decided", "approval_request", approval["id"])
    assert data["edited"] is True
    assert "print(6 * 7)" in json.dumps(data["diff"])
    ((_, executed),) = _audit(stack, "tool.executed", "tool_invocation", invocation["id"])
    assert executed["arguments"] == {"code": "print(6 * 7)"}
    assert [json.loads(out)["stdout"] for out in _tool_outputs(stack, run_id)] == ["42\n"]


def test_approval_badge_updates_in_another_tab_on_another_page(new_page):
    chat = new_page()
    sign_up(chat, unique_email("badge"))
    usage = chat.context.new_page()
    usage.goto("/usage/")
    approvals = chat.context.new_page()
    approvals.goto("/approvals/?status=pending")
    decided = chat.context.new_page()
    decided.goto("/approvals/?status=approved")
    for tab in (usage, approvals, decided):
        expect(tab.locator("#approval-badge")).to_have_text("Approvals")
        tab.evaluate(MARK_PAGE)
    expect(approvals.locator("#approvals-empty")).to_have_text("No approvals match these filters.")

    chat_new(chat)
    run_id, card = _ask(chat, "forget the meeting")
    approval_id = card.get_attribute("id")

    for tab in (usage, approvals):
        expect(tab.locator("#approval-badge .count")).to_have_text("1")
    expect(approvals.locator(f"#approvals-live #{approval_id}")).to_be_visible()
    # The line saying there is none goes (issue 22, defect 4); a page filtered on
    # another status gets no card.
    expect(approvals.locator("#approvals-empty")).to_be_hidden()
    expect(decided.locator(".approval-card")).to_have_count(0)
    expect(decided.locator("#approvals-empty")).to_be_visible()

    card.get_by_role("button", name="Approve", exact=True).click()
    expect(card.locator(".status-badge")).to_have_text("Approved")
    for tab in (usage, approvals):
        expect(tab.locator("#approval-badge .count")).to_have_count(0)
        assert tab.evaluate(SAME_PAGE), "the tab reloaded"
    expect(approvals.locator(f"#{approval_id} .status-badge")).to_have_text("Approved")
    expect_run_completed(chat, run_id)


# Opens sockets from the other user's page: one asks to join the owner's
# conversation, one sends a decision for the owner's approval.
PROBE_SOCKETS = """async ([conversationId, frame]) => {
  const join = await new Promise((resolve) => {
    const ws = new WebSocket(`ws://${location.host}/ws/?conversation=${conversationId}`);
    let opened = false;
    ws.onopen = () => { opened = true; };
    ws.onclose = (event) => resolve({opened, code: event.code});
  });
  const reply = await new Promise((resolve, reject) => {
    const ws = new WebSocket(`ws://${location.host}/ws/`);
    ws.onopen = () => ws.send(JSON.stringify(frame));
    ws.onmessage = (event) => { resolve(event.data); ws.close(); };
    ws.onclose = () => reject(new Error("closed without an answer"));
  });
  return {join, reply};
}"""


def test_another_user_can_neither_open_the_chat_nor_decide(new_page, stack, page_problems):
    page_problems.allow(r"(response 404: GET|status of 404 .*) .*/c/\d+/")
    page_problems.allow(r"WebSocket connection to .*/ws/\?conversation=\d+' failed: .* 403")
    owner = new_page()
    sign_up(owner, unique_email("owner"))
    conversation = chat_new(owner)
    run_id, card = _ask(owner, "forget the meeting")
    approval_id = int(card.get_attribute("id").removeprefix("approval-"))
    arguments_hash = card.get_attribute("data-arguments-hash")

    other = new_page()
    sign_up(other, unique_email("other"))
    response = other.goto(f"/c/{conversation}/")
    assert response.status == 404
    assert other.request.get(f"/approvals/{approval_id}/").status == 404
    other.goto("/approvals/")
    expect(other.locator("#approvals-empty")).to_be_visible()
    token = next(c["value"] for c in other.context.cookies() if c["name"] == "csrftoken")
    decide = other.request.post(
        f"/approvals/{approval_id}/decide",
        form={"decision": "approve", "arguments_hash": arguments_hash},
        headers={"X-CSRFToken": token},
    )
    assert decide.status == 404
    probe = other.evaluate(
        PROBE_SOCKETS,
        [
            conversation,
            {
                "type": "approval.decide",
                "approval_id": approval_id,
                "decision": "approve",
                "arguments_hash": arguments_hash,
            },
        ],
    )
    # The server refuses the handshake (closed before accept: HTTP 403).
    assert probe["join"]["opened"] is False, probe
    assert "No such approval." in probe["reply"]

    # Nothing changed for the owner: still pending, decidable, never run.
    invocation = _invocation(stack, run_id)
    assert invocation["status"] == "awaiting_approval"
    assert _approval(stack, invocation["id"])["status"] == "pending"
    owner.reload()
    expect(card.locator(".status-badge")).to_have_text("Pending")
    expect(card.get_by_role("button", name="Approve", exact=True)).to_be_enabled()
    assert _tool_outputs(stack, run_id) == []


def test_python_code_is_shown_highlighted_and_runs_after_approval(new_page, stack):
    page = new_page()
    sign_up(page, unique_email("python"))
    chat_new(page)
    run_id, card = _ask(page, "run python: print(sum(range(10)))")
    expect(card.locator(".tool")).to_have_text("code.python")
    code = card.locator(".code-arguments pre.highlight code.language-python")
    expect(code).to_have_text("print(sum(range(10)))")
    builtins = code.locator("span.nb")
    expect(builtins).to_have_text(["print", "sum", "range"])
    colour = builtins.first.evaluate("el => getComputedStyle(el).color")
    plain = code.evaluate("el => getComputedStyle(el).color")
    assert colour != plain, "the code is not highlighted"
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "chat-approval.png"), full_page=True)

    card.get_by_role("button", name="Approve", exact=True).click()
    run = page.locator(f"#run-{run_id}")
    expect(run.locator(".step-output")).to_contain_text('"stdout": "45\\n"', timeout=30_000)
    expect(run.locator(".msg-assistant.msg-complete").last).to_contain_text("45")
    expect_run_completed(page, run_id)
    assert _invocation(stack, run_id)["status"] == "succeeded"


PRICED_MODEL = """
from decimal import Decimal
from conversations.models import ModelConfig
ModelConfig.objects.get_or_create(
    name="Demo, priced",
    defaults=dict(
        litellm_model="demo/tollgate",
        input_cost_per_token=Decimal("0.000002"),
        output_cost_per_token=Decimal("0.000008"),
        max_output_tokens=1024,
    ),
)
"""

USER_BUDGET = """
from decimal import Decimal
from accounts.models import Budget, User
Budget.objects.create(user=User.objects.get(email={email!r}), period="monthly",
                      cost_limit_usd=Decimal({limit!r}))
"""

COST_LINE = re.compile(
    r"^Estimated cost: about \$0\.00\d\d? \(next model step: [\d,]+ input \+ up to 1,024"
    r" output tokens; this tool: no estimate\)$"
)


def test_the_card_shows_the_estimate_and_approving_over_the_budget_is_refused(
    new_page, stack, page_problems
):
    page_problems.allow(r"409.* .*/approvals/\d+/decide")  # the refusal, shown on the card
    stack.manage("shell", "-c", PRICED_MODEL)
    page = new_page()
    email = unique_email("cost")
    sign_up(page, email)
    chat_new(page)
    page.locator("#model-picker").select_option(label="Demo, priced")
    expect(page.locator("#model-picker option:checked")).to_have_text("Demo, priced")
    run_id, card = _ask(page, "remember that the meeting is on Friday")
    cost = card.locator(".approval-cost")
    expect(cost).to_have_text(COST_LINE)
    estimated = stack.sql(
        "SELECT estimated_cost_usd::text FROM approvals_approvalrequest WHERE run_id = %s",
        (run_id,),
    )[0][0]
    assert Decimal("0.008") < Decimal(estimated) < Decimal("0.01"), estimated  # 1,024 x $8/M

    # A budget of the requester's that the estimate would pass: refused, on the card.
    stack.manage("shell", "-c", USER_BUDGET.format(email=email, limit="0.001"))
    card.get_by_role("button", name="Approve", exact=True).click()
    expect(card.locator(".error")).to_contain_text(
        "Not approved: the estimated cost would pass a budget that limits your spending:"
        " monthly budget of $0.001 reached"
    )
    expect(card.locator(".error")).to_contain_text("Nothing ran; the request is still pending.")
    expect(card.locator(".status-badge")).to_have_text("Pending")
    expect(cost).to_have_text(COST_LINE)
    invocation = _invocation(stack, run_id)
    assert (invocation["status"], invocation["attempts"]) == ("awaiting_approval", 0)
    user_id = _user_id(stack, email)
    assert stack.sql("SELECT count(*) FROM tools_note WHERE user_id = %s", (user_id,)) == [(0,)]
    refused = _audit(
        stack, "approval.refused", "approval_request", _approval(stack, invocation["id"])["id"]
    )
    assert [data["reason"] for _, data in refused] == ["budget"]

    # Room for it: approved, the estimate held until the next model call is admitted.
    stack.sql(
        "UPDATE accounts_budget SET cost_limit_usd = 1 WHERE user_id = %s RETURNING id",
        (user_id,),
    )
    card.get_by_role("button", name="Approve", exact=True).click()
    expect(card.locator(".status-badge")).to_have_text("Approved")
    expect_run_completed(page, run_id)
    assert stack.sql(
        "SELECT kind, status FROM accounts_budgetreservation WHERE run_id = %s ORDER BY id",
        (run_id,),
    ) == [("approval", "released"), ("call", "settled")]


# Appends to a file in the conversation's workspace and prints how many times
# it has run: a second execution would print 2.
COUNTING_CODE = "open('ran.txt', 'a').write('x'); print('runs:', len(open('ran.txt').read()))"


def test_worker_killed_while_waiting_then_approval_runs_the_tool_once(new_page, stack):
    page = new_page()
    sign_up(page, unique_email("sigkill"))
    chat_new(page)
    run_id, card = _ask(page, f"run python: {COUNTING_CODE}")
    assert stack.sql("SELECT status FROM conversations_run WHERE id = %s", (run_id,)) == [
        ("awaiting_approval",)
    ]

    stack.kill("worker")  # SIGKILL to the worker's whole process group
    stack.start_worker()
    stack.wait_for_log("worker", " ready.")

    card.get_by_role("button", name="Approve", exact=True).click()
    expect(card.locator(".status-badge")).to_have_text("Approved")
    run = page.locator(f"#run-{run_id}")
    expect(run.locator(".step-output")).to_contain_text('"stdout": "runs: 1\\n"', timeout=60_000)
    expect_run_completed(page, run_id, timeout=60_000)
    expect(run.locator(".step-output")).to_have_count(1)

    invocation = _invocation(stack, run_id)
    assert (invocation["status"], invocation["attempts"]) == ("succeeded", 1)
    assert len(_audit(stack, "tool.executed", "tool_invocation", invocation["id"])) == 1
    assert [json.loads(out)["stdout"] for out in _tool_outputs(stack, run_id)] == ["runs: 1\n"]
    assert stack.sql("SELECT status FROM conversations_run WHERE id = %s", (run_id,)) == [
        ("completed",)
    ]
    page.reload()
    expect(page.locator(f"#run-{run_id} .step-output")).to_have_count(1)
    assert re.search(r"runs: 1\b", page.locator(f"#run-{run_id}").inner_text())
