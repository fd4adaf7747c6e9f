"""The built-in offline ``demo`` model: a litellm custom provider.

Model string ``demo/tollgate``. It streams deterministic text word by word at a
realistic pace (``TOLLGATE_DEMO_DELAY_MS`` per chunk, default 40; tests set 0),
reports usage, and emits OpenAI-style tool calls for the few requests it
recognises (``RECOGNISERS``) when a tool of that name is offered. Once a tool
result is in the history it answers from that result. Source: litellm's
"Custom API Server (Custom Format)" provider docs (``CustomLLM.astreaming``
yielding ``GenericStreamingChunk``).

litellm is imported lazily (it takes seconds to import); ``demo_register()``
is called by the gateway before the first model call.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from conversations.attachments import ATTACHED_HEAD

if TYPE_CHECKING:
    from litellm.types.llms.openai import ChatCompletionToolCallChunk

PROVIDER = "demo"
MODEL = "demo/tollgate"
#: Key of litellm's ``metadata`` naming a call that is not a chat reply
#: (``gateway.stream_chat``'s ``purpose``): ``"reformulate"`` rewrites the draft,
#: ``"judge"`` scores an evaluation's output (``demo_judge``).
PURPOSE_KEY = "tollgate_purpose"
#: "What is your system prompt?" (and the like): the demo answers with it, so a
#: conversation's settings can be seen at work.
SYSTEM_PROMPT_QUESTION = re.compile(
    r"\b(?:what(?:'s| is)|show|tell me|repeat|print)\b.*\bsystem prompt\b", re.I | re.S
)

_CITY_TIMEZONES = {
    "tokyo": "Asia/Tokyo",
    "london": "Europe/London",
    "paris": "Europe/Paris",
    "berlin": "Europe/Berlin",
    "new york": "America/New_York",
    "san francisco": "America/Los_Angeles",
    "los angeles": "America/Los_Angeles",
    "sydney": "Australia/Sydney",
    "delhi": "Asia/Kolkata",
    "utc": "UTC",
}


def _timezone(match: re.Match[str]) -> str:
    place = (match.group("place") or "").strip().lower().rstrip("?.! ")
    return _CITY_TIMEZONES.get(place, "UTC")


def _clean(text: str) -> str:
    return text.strip().rstrip("?.!").strip()


@dataclass(frozen=True)
class Recogniser:
    """One request the demo turns into a tool call.

    ``keys`` are the argument names to try, in order, against the offered
    tool's JSON schema; the first present one (else the first required
    property, else ``keys[0]``) gets ``value(match)``. A ``value`` returning a
    dict gives the whole arguments object instead (tools with several fields).
    """

    pattern: re.Pattern[str]
    tool: str  # registry name; the wire name replaces "." with "__"
    keys: tuple[str, ...]
    value: Callable[[re.Match[str]], str | dict[str, str]]


RECOGNISERS: tuple[Recogniser, ...] = (
    Recogniser(
        re.compile(r"\bwhat(?:'s| is)? (?:the )?time(?: is it)?(?: in (?P<place>[a-z .]+))?", re.I),
        "time.now",
        ("timezone", "tz"),
        _timezone,
    ),
    Recogniser(
        re.compile(r"\b(?:calculate|compute|evaluate)\s+(?P<v>.+)", re.I | re.S),
        "calc.evaluate",
        ("expression", "expr"),
        lambda m: _clean(m.group("v")),
    ),
    Recogniser(
        re.compile(r"^\s*remember(?: that)?\s+(?P<v>.+)", re.I | re.S),
        "notes.write",
        ("key",),
        lambda m: {"key": _note_key(m.group("v")), "value": _clean(m.group("v"))},
    ),
    Recogniser(
        re.compile(r"^\s*(?:forget(?: that)?|delete (?:the )?note)\s+(?P<v>.+)", re.I | re.S),
        "notes.delete",
        ("key",),
        lambda m: _note_key(m.group("v")),
    ),
    Recogniser(
        re.compile(r"\bfetch\s+(?P<v>https?://\S+)", re.I),
        "http.get",
        ("url",),
        lambda m: m.group("v").rstrip(".,)"),
    ),
    Recogniser(
        re.compile(r"^\s*run python:\s*(?P<v>.+)", re.I | re.S),
        "code.python",
        ("code", "source"),
        lambda m: m.group("v").strip(),
    ),
    Recogniser(
        re.compile(r"^\s*run shell:\s*(?P<v>.+)", re.I | re.S),
        "code.shell",
        ("command", "cmd", "script"),
        lambda m: m.group("v").strip(),
    ),
)

# Any offered tool by name: "use tool time.get_current_time {"timezone": "Asia/Tokyo"}".
# The name may be dotted or the wire name; the JSON object (optional) is the arguments.
USE_TOOL = re.compile(r"^\s*use tool (?P<name>[\w.-]+)\s*(?P<args>\{.*\})?\s*$", re.I | re.S)


def _use_tool_call(user_text: str, offered: dict[str, dict]) -> tuple[str, dict] | None:
    """``(wire name, arguments)`` for a "use tool <name> {json}" request, if offered."""
    match = USE_TOOL.match(user_text)
    if not match:
        return None
    name = wire_name(match.group("name"))
    if name not in offered:
        return None
    try:
        arguments = json.loads(match.group("args") or "{}")
    except ValueError:
        return None
    return (name, arguments) if isinstance(arguments, dict) else None


def _use_tool_calls(user_text: str, offered: dict[str, dict]) -> list[tuple[str, dict]]:
    """Several calls in one turn (they run in parallel): a message of two or more
    lines, each a "use tool <name> {json}" request of an offered tool; else none."""
    lines = [line for line in user_text.splitlines() if line.strip()]
    if len(lines) < 2:
        return []
    calls = [_use_tool_call(line, offered) for line in lines]
    return [call for call in calls if call is not None] if all(calls) else []


#: "hand off to Billing": a handoff to that agent (``conversations.agents``), if offered.
HAND_OFF = re.compile(r"\bhand(?:\s|-)?off to (?:the )?(?P<name>[\w .-]+?)(?: agent)?[.!]?$", re.I)


def _handoff_call(user_text: str, offered: dict[str, dict]) -> tuple[str, dict] | None:
    """``(handoff_to_<agent>, {"reason", "note"})`` for "hand off to <agent name>",
    when that agent's handoff tool is offered (its name slugged as the tool's)."""
    match = HAND_OFF.search(user_text.strip())
    if not match:
        return None
    name = match.group("name").strip()
    tool = "handoff_to_" + re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")
    if tool not in offered:
        return None
    return tool, {"reason": f"The user asked for {name}.", "note": user_text.strip()[:500]}


#: "ask Billing to check invoice 7": that agent called as a tool (``conversations.subagents``).
ASK_AGENT = re.compile(
    r"\bask (?:the )?(?P<name>[\w.-]+(?: [\w.-]+)*?)(?: agent)? to (?P<task>.+)$", re.I
)


def _ask_call(user_text: str, offered: dict[str, dict]) -> tuple[str, dict] | None:
    """``(ask_agent_<agent>, {"task"})`` for "ask <agent name> to <task>", when that
    agent's tool is offered (its name slugged as the tool's)."""
    match = ASK_AGENT.search(user_text.strip())
    if not match:
        return None
    tool = "ask_agent_" + re.sub(r"[^a-z0-9]+", "_", match.group("name").lower()).strip("_")
    if tool not in offered:
        return None
    return tool, {"task": match.group("task").strip().rstrip(".!")}


_HELP = (
    "I am Tollgate's **offline demo model**: I run without a network or an API key, "
    "so I cannot really think about your message, but I show how the product works "
    "(streaming, tools, approvals).\n\n"
    "You wrote: *{echo}*\n\n"
    "Things I recognise when tools are enabled:\n\n"
    "- `what time is it in Tokyo`\n"
    "- `calculate 17*23`\n"
    "- `remember that the meeting is on Friday` / `forget the meeting`\n"
    "- `fetch https://example.com`\n"
    "- `run python: print(2 + 2)` / `run shell: ls`\n"
    "- `hand off to Billing` (with an agent that may hand off to Billing)\n"
    "- `ask Billing to calculate 17*23` (with an agent that may call Billing as a tool)\n"
    '- `use tool <name> {{"arg": "value"}}` (any offered tool, e.g. an MCP server\'s); '
    "one per line for several calls at once\n\n"
    "Without tools, `what is your system prompt?` quotes this conversation's.\n\n"
    "Pick a real model in the model menu for real answers."
)
_GREETING = "Hello! I am the offline demo model. Ask me anything, or try `calculate 17*23`."


_NOTE_KEY_SKIP = {"the", "a", "an", "my", "our", "that", "this", "note", "about"}


def _note_key(text: str) -> str:
    """The note key the demo uses for a phrase: its first significant word.

    "remember that the meeting is on Friday" and "forget the meeting" both give
    ``meeting``, so a note written by one is deleted by the other.
    """
    words = re.findall(r"[a-z0-9]+", text.lower())
    significant = [word for word in words if word not in _NOTE_KEY_SKIP]
    return (significant or words or ["note"])[0][:100]


def wire_name(tool: str) -> str:
    """The name a tool has on the wire to the model (``notes.delete`` → ``notes__delete``)."""
    return tool.replace(".", "__")


def _text_of(message: dict[str, Any]) -> str:
    content = message.get("content") or ""
    if isinstance(content, list):  # OpenAI content parts
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return str(content)


def _offered(tools: list[dict] | None) -> dict[str, dict]:
    """Wire name → parameters schema of each tool offered in this request."""
    offered: dict[str, dict] = {}
    for tool in tools or []:
        function = tool.get("function") or {}
        if function.get("name"):
            offered[function["name"]] = function.get("parameters") or {}
    return offered


def _argument_key(schema: dict, keys: tuple[str, ...]) -> str:
    properties = schema.get("properties") or {}
    for key in keys:
        if key in properties:
            return key
    required = schema.get("required") or []
    return required[0] if required else keys[0]


def _call(turn: int, user_text: str, name: str, arguments: dict, index: int) -> dict[str, Any]:
    """An OpenAI-shaped tool call whose id is the same whenever the history is."""
    key: list[Any] = [turn, user_text, name] + ([index] if index else [])
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return {
        "id": f"call_demo_{digest}",
        "type": "function",
        "function": {"name": name, "arguments": json.dumps(arguments)},
    }


def demo_plan(
    messages: list[dict[str, Any]], tools: list[dict] | None
) -> tuple[str, list[dict[str, Any]]]:
    """Decide the demo's answer: ``(text, tool_calls)``; deterministic for a history.

    Tool calls are OpenAI-shaped ``{"id", "type": "function", "function": {"name",
    "arguments"}}`` with wire names, emitted only for tools offered in ``tools``.
    """
    if not messages:
        return _GREETING, []
    last = messages[-1]
    if last.get("role") == "tool":
        results = []
        for message in reversed(messages):
            if message.get("role") != "tool":
                break
            results.append(_text_of(message))
        return _answer_from_results(list(reversed(results))), []
    user_text = next(
        (_text_of(m) for m in reversed(messages) if m.get("role") == "user"), ""
    ).strip()
    # What a message's attached files add (conversations.attachments) is read apart.
    user_text, _, attached = user_text.partition(ATTACHED_HEAD)
    user_text = user_text.strip()
    if JUDGE_REQUEST.search(user_text):
        return demo_verdict(user_text), []
    said = SAY.match(user_text)
    if said:
        return said.group("text").strip() or "(nothing)", []
    offered = _offered(tools)
    several = _use_tool_calls(user_text, offered)
    if several:
        return "", [
            _call(len(messages), user_text, name, arguments, index)
            for index, (name, arguments) in enumerate(several)
        ]
    planned = (
        _use_tool_call(user_text, offered)
        or _handoff_call(user_text, offered)
        or _ask_call(user_text, offered)
    )
    for recogniser in RECOGNISERS:
        if planned is not None:
            break
        name = wire_name(recogniser.tool)
        match = recogniser.pattern.search(user_text)
        if match and name in offered:
            value = recogniser.value(match)
            planned = (
                name,
                value
                if isinstance(value, dict)
                else {_argument_key(offered[name], recogniser.keys): value},
            )
    if planned is not None:
        name, arguments = planned
        return "", [_call(len(messages), user_text, name, arguments, 0)]
    if cited := _cited_answer(attached):
        return cited, []
    if summary := _summary(user_text):
        return summary, []
    if re.fullmatch(r"(?i)(hi|hello|hey)[!. ]*", user_text):
        return _GREETING, []
    if SYSTEM_PROMPT_QUESTION.search(user_text):
        system = "\n\n".join(_text_of(m) for m in messages if m.get("role") == "system")
        quoted = "\n".join(f"> {line}" for line in system.splitlines()) or "> (none)"
        return f"My system prompt is:\n\n{quoted}", []
    echo = " ".join(user_text.split())[:200] or "(nothing)"
    return _HELP.format(echo=echo.replace("*", "")), []


#: A Compare summary's request (``conversations.compare.compare_messages``): each
#: answer under "### Answer from <model>".
_ANSWER_HEADING = re.compile(r"^### Answer from (?P<name>.+)$", re.M)


def _summary(user_text: str) -> str:
    """The demo's summary of a Compare request: ``"Summary of N answers: "``, then each
    model's name with the first words of its answer (or that it failed); ``""`` for
    any other request."""
    headings = list(_ANSWER_HEADING.finditer(user_text))
    if not headings or not user_text.startswith("Question:"):
        return ""
    items = []
    for i, heading in enumerate(headings):
        end = headings[i + 1].start() if i + 1 < len(headings) else len(user_text)
        body = " ".join(user_text[heading.end() : end].split())
        words = " ".join(body.split()[:8]).replace("*", "")
        items.append(f"- **{heading.group('name').strip()}**: {words}")
    return f"Summary of {len(headings)} answers:\n\n" + "\n".join(items)


#: A judge's request (``conversations.chains.JUDGE_INSTRUCTION`` asks for this key).
JUDGE_REQUEST = re.compile(r'"verdict"')
#: "say: <text>": the demo answers with the text, verbatim (chains' tests follow it).
SAY = re.compile(r"^say:\s*(?P<text>.*)$", re.I | re.S)


def demo_verdict(text: str) -> str:
    """The demo judge's JSON verdict on ``text`` (the judge's request), deterministic:
    "pass" when the answer judged says ``PASS``; else "revise", asking for ``PASS``
    (so a "say:" step passes in its next round), or, when it says ``STUBBORN``,
    asking for nothing it can give (so a reflection loop runs to its maximum)."""
    if "PASS" in text:
        return json.dumps({"verdict": "pass", "feedback": ""})
    feedback = "Still not right." if "STUBBORN" in text else "Say PASS when it is right."
    return json.dumps({"verdict": "revise", "feedback": feedback})


_LOWER_I = re.compile(r"\bi\b")
_SENTENCE_START = re.compile(r"(^|[.!?]\s+)([a-z])")
_QUESTION_WORDS = ("what", "why", "how", "who", "when", "where", "which", "can", "could",
                   "would", "should", "is", "are", "do", "does", "did", "will")  # fmt: skip


def demo_reformulate(messages: list[dict[str, Any]]) -> str:
    """The demo's rewrite of the draft (the last user message): whitespace tidied,
    sentences capitalised, "i" as "I", a closing full stop or question mark, and
    a request to be specific added. Deterministic, so tests can expect it."""
    draft = next((_text_of(m) for m in reversed(messages) if m.get("role") == "user"), "")
    lines = [" ".join(line.split()) for line in draft.strip().splitlines()]
    text = "\n".join(line for line in lines if line)
    if not text:
        return ""
    text = _LOWER_I.sub("I", text)
    text = _SENTENCE_START.sub(lambda m: m.group(1) + m.group(2).upper(), text)
    if text[-1] not in ".!?":
        last = re.split(r"[.!?]\s+", text)[-1]
        question = last.split(maxsplit=1)[0].lower() in _QUESTION_WORDS
        text += "?" if question else "."
    return text + "\nPlease be specific and answer step by step."


def demo_judge(messages: list[dict[str, Any]]) -> str:
    """The demo's verdict on an output it is asked to judge (the last user message):
    ``{"score": N}``, N from 1 to 10 by the message's length, so tests can expect it."""
    text = next((_text_of(m) for m in reversed(messages) if m.get("role") == "user"), "")
    return json.dumps({"score": 1 + len(text) % 10})


#: A numbered passage as ``knowledge.tool.hits_text`` gives it: its head, then its text.
_PASSAGE = re.compile(
    r"^\[(?P<n>\d+)\] (?P<name>.+?)(?:, (?P<where>page \d+|section .+?))? — \S+\n"
    r"<document-text>\n(?P<text>.*?)\n</document-text>",
    re.M | re.S,
)


def _cited_answer(text: str) -> str:
    """The demo's answer from numbered passages (a message's files, a search's
    results): the first one's first sentence, quoted and cited ``[1]``; ``""``
    when ``text`` has none."""
    match = _PASSAGE.search(text)
    if match is None:
        return ""
    words = " ".join(match.group("text").split())
    sentence = re.split(r"(?<=[.!?])\s", words, maxsplit=1)[0][:300]
    where = f" ({match.group('where')})" if match.group("where") else ""
    return (
        f"From **{match.group('name').replace('*', '')}**{where}: "
        f"“{sentence.replace('*', '')}” [{match.group('n')}]"
    )


def _answer_from_results(results: list[str]) -> str:
    parts = []
    for result in results:
        if cited := _cited_answer(result):
            parts.append(cited)
            continue
        reason = _denial_reason(result)
        if reason is not None:
            parts.append(
                "I could not do that: the tool call was denied"
                + (f" — the reason given was “{reason}”." if reason else ".")
            )
        else:
            shown = result.strip()
            if len(shown) > 1500:
                shown = shown[:1500] + " …"
            parts.append(f"Done — the tool said: {shown}")
    return "\n\n".join(parts) or "Done."


def _denial_reason(result: str) -> str | None:
    """The reason quoted in a denial/expiry result, ``""`` if none, ``None`` if not a denial."""
    try:
        data = json.loads(result)
    except ValueError:
        data = None
    if isinstance(data, dict):
        status = str(data.get("status", "")).lower()
        if status in {"denied", "expired"} or data.get("denied"):
            return str(data.get("reason") or data.get("error") or "")
    match = re.search(r"\b(denied|expired)\b(?:[^:]*:\s*(?P<reason>.+))?", result, re.I | re.S)
    if match:
        return (match.group("reason") or "").strip().strip('"“”')
    return None


def _delay_seconds() -> float:
    try:
        return max(0, int(os.environ.get("TOLLGATE_DEMO_DELAY_MS", "40"))) / 1000
    except ValueError:
        return 0.04


def _chunks(text: str) -> list[str]:
    """Split keeping whitespace attached, so the chunks join back to ``text``."""
    return re.findall(r"\s*\S+\s*", text) or ([text] if text else [])


def _count_tokens(text: str) -> int:
    # A deterministic approximation: the demo bills nothing, it only reports.
    return max(1, round(len(re.findall(r"\w+|[^\w\s]", text)) * 1.3)) if text else 0


def _build_provider() -> Any:
    # litellm is imported on first use: seconds at import (see the module docstring).
    from litellm import CustomLLM
    from litellm.types.utils import GenericStreamingChunk

    class DemoLLM(CustomLLM):
        # litellm declares astreaming as a coroutine returning the iterator, but uses
        # the call's result as the stream (CustomStreamWrapper(completion_stream=...)):
        # an async generator, as its custom-provider docs write it; litellm passes
        # every argument by keyword.
        async def astreaming(  # type: ignore[override]
            self, *args: Any, **kwargs: Any
        ) -> AsyncIterator[GenericStreamingChunk]:
            messages = kwargs.get("messages") or []
            optional = kwargs.get("optional_params") or {}
            metadata = (kwargs.get("litellm_params") or {}).get("metadata") or {}
            calls: list[dict[str, Any]] = []
            if metadata.get(PURPOSE_KEY) == "reformulate":
                text = demo_reformulate(messages)
            elif metadata.get(PURPOSE_KEY) == "judge":
                text = demo_judge(messages)
            else:
                text, calls = demo_plan(messages, optional.get("tools"))
            prompt_tokens = sum(_count_tokens(_text_of(m)) + 4 for m in messages)
            delay = _delay_seconds()
            for piece in _chunks(text):
                if delay:
                    await asyncio.sleep(delay)
                yield {
                    "text": piece,
                    "tool_use": None,
                    "is_finished": False,
                    "finish_reason": "",
                    "usage": None,
                    "index": 0,
                }
            for position, call in enumerate(calls):
                if delay:
                    await asyncio.sleep(delay)
                yield {
                    "text": "",
                    # demo_plan's calls are OpenAI tool calls: with the index, a chunk's.
                    "tool_use": cast("ChatCompletionToolCallChunk", {**call, "index": position}),
                    "is_finished": False,
                    "finish_reason": "",
                    "usage": None,
                    "index": 0,
                }
            completion_tokens = _count_tokens(text) + sum(
                _count_tokens(c["function"]["arguments"]) + 3 for c in calls
            )
            yield {
                "text": "",
                "tool_use": None,
                "is_finished": True,
                "finish_reason": "tool_calls" if calls else "stop",
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens,
                },
                "index": 0,
            }

    return DemoLLM()


_lock = threading.Lock()


def demo_register() -> None:
    """Register the ``demo`` provider with litellm once per process (idempotent)."""
    import litellm  # deliberately lazy: seconds at import (see the module docstring)

    with _lock:
        if any(item["provider"] == PROVIDER for item in litellm.custom_provider_map):
            return
        litellm.suppress_debug_info = True
        litellm.custom_provider_map = [
            *litellm.custom_provider_map,
            {"provider": PROVIDER, "custom_handler": _build_provider()},
        ]
        from litellm.utils import custom_llm_setup  # lazy, as litellm above

        custom_llm_setup()
