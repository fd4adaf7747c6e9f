"""A conversation out as Markdown (to read) or JSON (to keep or move), and a JSON
export back in as a new conversation.

The JSON (``FORMAT``, ``VERSION``) holds every message and run of every branch,
the branch shown (``current_run``), each run's tool calls with their gate
decisions and approvals, and each reply's usage. Ids in it are the exporting
site's, used only to link its records to each other. An import makes a new
conversation of the importing user with the messages and runs (their tree and
the branch shown); tool calls and decisions stay history, kept on each run
(``metadata["imported_tool_calls"]``): nothing is run, approved or charged again.
The Markdown is the branch shown, as a reader follows it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.db import transaction
from django.utils import timezone

from approvals.models import ApprovalRequest
from audit.services import audit_record
from conversations import branches, events
from conversations.models import Conversation, Message, Run
from conversations.runs import run_import
from conversations.services import ConversationError, auto_title, model_config_pick
from project.inbound import InboundError, json_parse
from tools.models import ToolInvocation

FORMAT = "tollgate.conversation"
VERSION = 1
#: Largest export an import reads (characters of JSON).
MAX_IMPORT_CHARS = 20_000_000
#: Most messages an import creates.
MAX_IMPORT_MESSAGES = 20_000


class ImportRefused(ConversationError):
    """The file is not a conversation this site can import; says why."""


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _usage(message: Message) -> dict[str, Any] | None:
    if message.role != Message.Role.ASSISTANT:
        return None
    return {
        "prompt_tokens": message.prompt_tokens,
        "completion_tokens": message.completion_tokens,
        "cost_usd": str(message.cost_usd) if message.cost_usd is not None else None,
        "latency_ms": message.latency_ms,
    }


def _tool_call(invocation: ToolInvocation, approval: ApprovalRequest | None) -> dict[str, Any]:
    decided = None
    if approval is not None:
        decided = {
            "status": approval.status,
            "decided_by": approval.decided_by.email if approval.decided_by else None,
            "decided_at": _iso(approval.decided_at),
            "reason": approval.reason,
            "edited_arguments": approval.edited_arguments,
            "explanation": approval.explanation,
        }
    return {
        "message": invocation.message_id,
        "call_id": invocation.tool_call_id,
        "tool": invocation.tool_name,
        "status": invocation.status,
        "decision": invocation.decision,
        "why": invocation.decision_explanation,
        "arguments_requested": invocation.arguments_requested,
        "arguments_executed": invocation.arguments_executed,
        "approval": decided,
        "result": invocation.result,
        "is_error": invocation.is_error,
        "duration_ms": invocation.duration_ms,
    }


def conversation_export(*, conversation: Conversation) -> dict[str, Any]:
    """The whole conversation as the JSON export's data (see the module docstring)."""
    everything = list(conversation.messages.order_by("id"))
    # A chain's parts (its steps' runs) stay out: the chain's exchange carries its answer,
    # as the conversation reads it; their usage counts in the totals.
    every_run = list(conversation.runs.order_by("id"))
    parts = {r.pk for r in every_run if r.orchestrator_id is not None}
    runs = [r for r in every_run if r.pk not in parts]
    messages = [m for m in everything if m.run_id not in parts]
    tree = branches.conversation_tree(conversation_id=conversation.pk)
    invocations = list(
        ToolInvocation.objects.filter(conversation_id=conversation.pk)
        .select_related("approval__decided_by")
        .order_by("run_id", "message_id", "position", "id")
    )
    calls: dict[int, list[dict[str, Any]]] = {}
    for invocation in invocations:
        approval = getattr(invocation, "approval", None)
        calls.setdefault(invocation.run_id, []).append(_tool_call(invocation, approval))
    usage = [m for m in everything if m.role == Message.Role.ASSISTANT]
    return {
        "format": FORMAT,
        "version": VERSION,
        "exported_at": timezone.now().isoformat(),
        "title": conversation.title,
        "model": conversation.model_config.name,
        "created_at": _iso(conversation.created_at),
        "current_run": branches.shown_leaf(conversation, tree),
        "usage": {
            "prompt_tokens": sum(m.prompt_tokens or 0 for m in usage),
            "completion_tokens": sum(m.completion_tokens or 0 for m in usage),
            "cost_usd": str(sum((m.cost_usd or Decimal(0) for m in usage), Decimal(0))),
        },
        "messages": [
            {
                "id": m.pk,
                "role": m.role,
                "status": m.status,
                "content": m.content,
                "run": m.run_id,
                "tool_calls": m.tool_calls,
                "tool_call_id": m.tool_call_id,
                "model": m.model,
                "usage": _usage(m),
                "created_at": _iso(m.created_at),
            }
            for m in messages
        ],
        "runs": [
            {
                "id": r.pk,
                "user_message": r.user_message_id,
                "parent": tree.parent.get(r.pk),
                "status": r.status,
                "error": r.error,
                "created_at": _iso(r.created_at),
                "tool_calls": calls.get(r.pk, []),
            }
            for r in runs
        ],
    }


def conversation_markdown(*, conversation: Conversation) -> str:
    """The branch shown as Markdown: each message under a heading, each tool call
    with its decision, arguments and output, each reply's usage."""
    data = conversation_export(conversation=conversation)
    tree = branches.conversation_tree(conversation_id=conversation.pk)
    path = tree.path(data["current_run"])
    on_path = set(path) | {tree.message[r] for r in path}
    calls = {run["id"]: run["tool_calls"] for run in data["runs"]}
    out = [f"# {conversation}", "", f"Model: {data['model']} · exported {data['exported_at']}", ""]
    answered = set(tree.message.values())
    for message in data["messages"]:
        mine = message["id"] in on_path or message["run"] in on_path
        legacy = message["run"] is None and message["id"] not in answered  # on every branch
        if not (mine or legacy) or message["role"] in ("system", "tool"):
            continue
        who = "You" if message["role"] == "user" else "Assistant"
        out += [f"## {who}", "", message["content"] or "", ""]
        for call in calls.get(message["run"], []) if message["role"] == "assistant" else []:
            if call["message"] != message["id"]:
                continue
            out += _call_markdown(call)
        usage = message["usage"]
        if usage and usage["prompt_tokens"] is not None:
            cost = f" · ${usage['cost_usd']}" if usage["cost_usd"] is not None else ""
            out += [
                f"*{message['model']} · {usage['prompt_tokens']} + "
                f"{usage['completion_tokens']} tokens{cost}*",
                "",
            ]
    return "\n".join(out).rstrip() + "\n"


def _call_markdown(call: dict[str, Any]) -> list[str]:
    why = f" — {call['why']}" if call["why"] else ""
    lines = [f"### Tool `{call['tool']}`: {call['status']}{why}", ""]
    approval = call["approval"]
    if approval:
        by = f" by {approval['decided_by']}" if approval["decided_by"] else ""
        reason = f" ({approval['reason']})" if approval["reason"] else ""
        lines += [f"Approval: {approval['status']}{by}{reason}", ""]
    arguments = call["arguments_executed"] or call["arguments_requested"]
    fence = "````"
    lines += [f"{fence}json", json.dumps(arguments, indent=2, ensure_ascii=False), fence, ""]
    if call["result"]:
        lines += ["Output:", "", f"{fence}text", call["result"], fence, ""]
    return lines


# -- import ---------------------------------------------------------------------------


@dataclass
class _Plan:
    messages: list[dict[str, Any]]
    runs: list[dict[str, Any]]
    current: int | None


def _refuse(why: str) -> ImportRefused:
    return ImportRefused(f"This file cannot be imported: {why}")


def _plan(text: str) -> tuple[dict[str, Any], _Plan]:
    """Parse and check an export; what to create. Raises ``ImportRefused``."""
    if len(text) > MAX_IMPORT_CHARS:
        raise _refuse(f"it is larger than {MAX_IMPORT_CHARS:,} characters.")
    try:
        data = json_parse(text, max_chars=MAX_IMPORT_CHARS, max_depth=64)
    except InboundError as error:
        raise _refuse(f"it is not JSON ({error}).") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise _refuse("it is not a Tollgate conversation export.")
    if data.get("version") != VERSION:
        raise _refuse(f"its version {data.get('version')!r} is not {VERSION}.")
    messages, runs = data.get("messages"), data.get("runs")
    if not isinstance(messages, list) or not isinstance(runs, list):
        raise _refuse("it has no messages.")
    if len(messages) > MAX_IMPORT_MESSAGES:
        raise _refuse(f"it has more than {MAX_IMPORT_MESSAGES:,} messages.")
    roles = {choice for choice, _ in Message.Role.choices}
    ids: set[Any] = set()
    for message in messages:
        if not isinstance(message, dict) or message.get("role") not in roles:
            raise _refuse("a message has no role Tollgate knows.")
        if not isinstance(message.get("content", ""), str) or "\x00" in message.get("content", ""):
            raise _refuse("a message's text is not text.")
        ids.add(message.get("id"))
    run_ids = {run.get("id") for run in runs if isinstance(run, dict)}
    for run in runs:
        if not isinstance(run, dict) or run.get("user_message") not in ids:
            raise _refuse("a run answers no message of the file.")
        if run.get("parent") is not None and run.get("parent") not in run_ids:
            raise _refuse("a run follows no run of the file.")
    for message in messages:
        if message.get("run") is not None and message.get("run") not in run_ids:
            raise _refuse("a message belongs to no run of the file.")
    current = data.get("current_run")
    return data, _Plan(messages, runs, current if current in run_ids else None)


def _text(value: Any, limit: int = 200) -> str:
    return value[:limit] if isinstance(value, str) else ""


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _cost(value: Any) -> Decimal | None:
    try:
        cost = Decimal(str(value)) if value is not None else None
    except ArithmeticError:
        return None
    return cost if cost is not None and cost.is_finite() and cost >= 0 else None


def conversation_import(*, user, text: str, model_config_id: int | None = None) -> Conversation:
    """A new conversation of ``user`` from a JSON export (``text``), with the model
    ``model_config_id`` (default: the default model). Raises ``ImportRefused`` (with
    why) and ``services.ModelUnavailable``. Audited (``conversation.imported``)."""
    data, plan = _plan(text)
    config = model_config_pick(model_config_id=model_config_id)
    statuses = {choice for choice, _ in Message.Status.choices}
    with transaction.atomic():
        title = _text(data.get("title")).strip()
        conversation = Conversation.objects.create(owner=user, model_config=config, title=title)
        new_message: dict[Any, Message] = {}
        for item in sorted(plan.messages, key=lambda m: str(m.get("created_at") or "")):
            usage: dict[str, Any] = item["usage"] if isinstance(item.get("usage"), dict) else {}
            status = str(item["status"]) if item.get("status") in statuses else "complete"
            calls = item.get("tool_calls")
            new_message[item.get("id")] = Message.objects.create(
                conversation=conversation,
                role=item["role"],
                status="stopped" if status == "streaming" else status,
                content=item.get("content") or "",
                tool_calls=calls if isinstance(calls, list) else None,
                tool_call_id=_text(item.get("tool_call_id")),
                model=_text(item.get("model")),
                prompt_tokens=_count(usage.get("prompt_tokens")),
                completion_tokens=_count(usage.get("completion_tokens")),
                cost_usd=_cost(usage.get("cost_usd")),
                latency_ms=_count(usage.get("latency_ms")),
                metadata={"imported": True},
            )
        new_run: dict[Any, Run] = {}
        pending = list(plan.runs)
        while pending:  # in the file's order, each after its parent
            made = len(new_run)
            for item in list(pending):
                if item.get("parent") is not None and item["parent"] not in new_run:
                    continue
                parent = new_run.get(item.get("parent"))
                new_run[item["id"]] = run_import(
                    status=str(item.get("status")),
                    conversation=conversation,
                    user_message=new_message[item["user_message"]],
                    parent=parent,
                    error=_text(item.get("error"), 2000),
                    model_config=config,
                    metadata={
                        "imported_tool_calls": item.get("tool_calls") or [],
                        **({"root": True} if parent is None else {}),
                    },
                    finished_at=timezone.now(),
                )
                pending.remove(item)
            if len(new_run) == made:
                raise _refuse("its runs follow each other in a circle.")
        for item in plan.messages:
            run = new_run.get(item.get("run"))
            if run is not None:
                message = new_message[item.get("id")]
                message.run = run
                message.save(update_fields=["run"])
        conversation.current_run = new_run.get(plan.current) or (
            max(new_run.values(), key=lambda r: r.pk) if new_run else None
        )
        if not conversation.title:
            first = next((m for m in new_message.values() if m.role == Message.Role.USER), None)
            conversation.title = auto_title(first.content) if first else "Imported conversation"
        conversation.save(update_fields=["current_run", "title", "updated_at"])
        events.conversation_changed(conversation_id=conversation.pk, conversation=conversation)
        audit_record(
            action="conversation.imported",
            actor=user,
            target_type="conversation",
            target_id=conversation.pk,
            data={"messages": len(new_message), "runs": len(new_run)},
        )
    return conversation
