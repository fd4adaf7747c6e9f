"""The fixed fuzz corpus: malformed WebSocket frames and form posts.

Deterministic (no randomness): each case is built from a base request that the
server refuses for a known reason, with one part replaced by a bad value, so
that every frame of ``frames()`` must be refused, whatever the bad value makes
of it. The ids are the fuzzing user's and another user's rows in the stack.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

#: Values of the wrong type, out of range, or that look like numbers to ``isdigit``.
BAD_IDS: list[Any] = [
    None, True, False, 1.5, 1.0, -1, 0, 2**63, 10**30, "", " ", "abc", "²", "\u0661\u0662",
    "1e3", " 7", "7 ", "0x10", "-5", "\u0000", "7\u0000", [], [1], {}, {"a": 1},
    "9" * 400,
]  # fmt: skip

#: Text values: wrong types, NUL characters, too long, nested.
BAD_TEXTS: list[Any] = [
    None, 1, 1.5, True, [], ["a"], {}, {"a": "b"}, "a\u0000b", "\u0000",
    "x" * 100_001, "   ", [[[["deep"]]]],
]  # fmt: skip

#: Deep enough for any recursive parser; small enough for daphne's 1 MiB frame limit.
NESTED = 100_000


def nested_json(depth: int, *, inner: str = "1") -> str:
    """An object nested ``depth`` levels deep, as JSON text."""
    return '{"a":' * depth + inner + "}" * depth


def nested_list(depth: int) -> str:
    return "[" * depth + "]" * depth


#: JSON text for ``edited_arguments`` (the tool's schema: ``{"key": string}``).
BAD_ARGUMENTS: list[Any] = [
    "{", "[]", "1", "null", '"key"', '{"key": NaN}', '{"key": Infinity}',
    '{"key": -Infinity}', '{"key": 1e999}', '{"key": "a\\u0000b"}', '{"\\u0000": 1}',
    '{"key": "\\ud800"}', '{"key": "\\udfff tail"}', nested_json(5000), nested_list(NESTED),
    '{"key": ' + nested_list(150) + "}", '{"key": ' + nested_json(300, inner='"m"') + "}",
    "x" * 200_001, {"key": "m"}, ["a"], 5, '{"key": "m",}', "{'key': 'm'}",
    '{"key": "' + "x" * 150_000 + '"}',
]  # fmt: skip


@dataclass(frozen=True)
class Ids:
    """The rows the corpus points at.

    ``archived``: the fuzzing user's archived conversation (a message to it is
    refused); ``finished_run``: their completed run (Stop is refused);
    ``approval``: their pending approval, whose real hash the corpus never quotes;
    ``other_*``: another user's.
    """

    conversation: int
    archived: int
    finished_run: int
    approval: int
    other_conversation: int
    other_run: int
    other_approval: int


def _send(ids: Ids, **fields: Any) -> dict:
    return {"type": "message.send", "conversation_id": ids.archived, "content": "hi", **fields}


def _cancel(ids: Ids, **fields: Any) -> dict:
    return {"type": "run.cancel", "run_id": ids.finished_run, **fields}


def _decide(ids: Ids, **fields: Any) -> dict:
    # A well-formed hash of other arguments: refused even when the rest is valid.
    return {
        "type": "approval.decide",
        "approval_id": ids.approval,
        "decision": "approve",
        "arguments_hash": "0" * 64,
        **fields,
    }


def _without(frame: dict, key: str) -> dict:
    return {k: v for k, v in frame.items() if k != key}


def _text(value: Any) -> str:
    return json.dumps(value) if not isinstance(value, str) else value


def frames(ids: Ids) -> list[tuple[str, str | bytes]]:
    """``(label, frame)`` pairs, each one the consumer must refuse with a message."""
    raw: list[str | bytes] = [
        "", " ", "{", "}", "not json", "null", "true", "1", '"s"', "[]", "[1, 2]", "{}",
        "NaN", "Infinity", "-Infinity", "1e999", '{"type": "run.cancel",}',
        "{'type': 'run.cancel'}", '{"type": "run.cancel", "run_id": 1', "\u0000",
        '{"type": "run.cancel", "run_id": NaN}', '{"type": "run.cancel", "run_id": Infinity}',
        '{"type": "run.cancel", "run_id": 1e999}',
        f'{{"type": "message.send", "conversation_id": {ids.archived}, "content": "\\ud800"}}',
        f'{{"type": "message.send", "conversation_id": {ids.conversation}, "content": "a\\u0000"}}',
        '{"type": "run.cancel", "type": "explode"}',
        '{"type": "run.cancel", "x": ' + nested_list(1000) + "}",
        nested_list(199), nested_list(NESTED), nested_json(NESTED),
        '{"type": "approval.decide", "approval_id": 1, "x": ' + nested_json(NESTED) + "}",
        "x" * 1_000_001, json.dumps(_send(ids, content="y" * 990_000)),
        b"\x00\x01", b"", json.dumps(_cancel(ids)).encode(),
        "\ufeff" + json.dumps(_cancel(ids)), json.dumps(_cancel(ids)) + " trailing",
    ]  # fmt: skip
    cases: list[tuple[str, str | bytes]] = [(f"raw[{i}]", frame) for i, frame in enumerate(raw)]
    types: list[Any] = [
        None, [], {}, 1, 1.5, True, "", " ", "message.send ", "MESSAGE.SEND", "message_send",
        "explode", "bench.echo", "html.push", "websocket.receive", "websocket.disconnect",
        "run.cancel\u0000", "x" * 100_000, ["message.send"], {"message.send": 1},
    ]  # fmt: skip
    for i, kind in enumerate(types):
        cases.append((f"type[{i}]", json.dumps({"type": kind, "run_id": ids.finished_run})))
    cases.append(("type-missing", json.dumps({"run_id": ids.finished_run})))

    builders = {"message.send": _send, "run.cancel": _cancel, "approval.decide": _decide}
    id_fields = {
        "message.send": "conversation_id",
        "run.cancel": "run_id",
        "approval.decide": "approval_id",
    }
    for kind, build in builders.items():
        base = build(ids)
        field = id_fields[kind]
        # An empty message is refused whatever conversation it names.
        if kind == "message.send":
            base = build(ids, content="")
        for i, value in enumerate(BAD_IDS):
            cases.append((f"{kind}.{field}[{i}]", json.dumps({**base, field: value})))
        for key in base:
            if key != "type":
                cases.append((f"{kind}-{key}-missing", json.dumps(_without(base, key))))
        # Unknown keys are ignored (htmx adds HEADERS); the frame is refused for the rest.
        for i, junk in enumerate([nested_list(150), 1e308, None, "\u0000", "x" * 50_000]):
            extra = _text(junk) if i == 0 else json.dumps(junk)
            frame = json.dumps(build(ids))[:-1] + f', "zz": {extra}}}'
            cases.append((f"{kind}-extra[{i}]", frame))

    for i, value in enumerate(BAD_TEXTS):
        cases.append((f"message.send.content[{i}]", json.dumps(_send(ids, content=value))))
        # The same to the live conversation: refused for the text alone.
        live = _send(ids, conversation_id=ids.conversation, content=value)
        cases.append((f"message.send.content-live[{i}]", json.dumps(live)))
    # htmx's ws-send adds the request headers as ``HEADERS``: ignored, whatever they are.
    for kind, build in builders.items():
        for i, headers in enumerate([[], "x", None, {"HX-Request": "\u0000"}, {"a": [[[]]]}]):
            cases.append((f"{kind}-HEADERS[{i}]", json.dumps(build(ids, HEADERS=headers))))
    cases.append(
        ("message.send-other", json.dumps(_send(ids, conversation_id=ids.other_conversation)))
    )
    cases.append(("run.cancel-other", json.dumps(_cancel(ids, run_id=ids.other_run))))
    cases.append(
        ("approval.decide-other", json.dumps(_decide(ids, approval_id=ids.other_approval)))
    )

    decide_fields: dict[str, list[Any]] = {
        "decision": [None, 1, [], {}, "", "maybe", "APPROVE", "approve\u0000", "preview",
                     "x" * 10_000],
        "arguments_hash": [None, 1, [], "", "zz", "A" * 64, "0" * 63, "0" * 65, "g" * 64,
                           "\u0000" * 64],
        "reason": [1, [], {}, "\u0000", "r\u0000", "x" * 2001],
        "always_allow": [[], {}, "maybe", 2, "\u0000"],
        "arguments_json": ["{", '{"key": NaN}', '{"key": "\\u0000"}', nested_list(NESTED),
                           "x" * 200_001],
        "arg__key": ["\u0000", "a\u0000", ["a"], {"a": 1}, "x" * 300_000],
    }  # fmt: skip
    for field, values in decide_fields.items():
        for i, value in enumerate(values):
            extra: dict[str, Any] = {field: value}
            if field in {"arguments_json", "arg__key"}:
                extra["decision"] = "edit"
            cases.append((f"approval.decide.{field}[{i}]", json.dumps(_decide(ids, **extra))))
    for decision in ("edit", "approve", "preview"):
        for i, value in enumerate(BAD_ARGUMENTS):
            frame = _decide(ids, decision=decision, edited_arguments=value)
            cases.append((f"approval.decide.edited_arguments[{decision}][{i}]", json.dumps(frame)))
    return cases


def socket_queries(ids: Ids) -> list[str]:
    """``/ws/`` query strings that must be refused at connect (close code 4403)."""
    return [
        "conversation=²", "conversation=\u0661", "conversation=-1", "conversation=0",
        "conversation=99999999999999999999999", "conversation=abc", "conversation=%00",
        "conversation=1e3", f"conversation={ids.other_conversation}",
        f"conversation={ids.conversation}%00", f"conversation=+{ids.conversation}",
        f"conversation=%20{ids.conversation}",
    ]  # fmt: skip


@dataclass(frozen=True)
class Post:
    """One HTTP request of the corpus; ``bad``: it must be refused (4xx)."""

    label: str
    method: str
    path: str
    data: Any = None
    content: bytes | None = None
    content_type: str = ""
    htmx: bool = False
    bad: bool = True


def posts(ids: Ids, *, max_chars: int) -> list[Post]:
    """Form posts (and the GETs that take input) across every endpoint."""
    c, a = ids.conversation, ids.approval
    items: list[Post] = []
    add = items.append
    for i, value in enumerate(["abc", "²", "-1", "0", "9" * 30, "1.5", "\u0000", " 1"]):
        add(Post(f"create.model_config[{i}]", "POST", "/c/new", {"model_config": value}))
    for i, content in enumerate(["hi\u0000there", "x" * (max_chars + 1)]):
        add(Post(f"create.content[{i}]", "POST", "/c/new", {"content": content}))
    for i, title in enumerate(["", "   ", "\u0000", "a\u0000", "x" * 201, "x" * 5000]):
        for htmx in (False, True):
            add(Post(f"rename.title[{i}]{htmx:d}", "POST", f"/c/{c}/rename", {"title": title},
                     htmx=htmx))  # fmt: skip
    add(Post("rename.missing", "POST", f"/c/{c}/rename", {}))
    add(Post("rename.other", "POST", f"/c/{ids.other_conversation}/rename", {"title": "t"}))
    add(Post("rename.huge-id", "POST", "/c/99999999999999999999999/rename", {"title": "t"}))
    for i, value in enumerate(["", "abc", "²", "-1", "9" * 30, "\u0000"]):
        add(Post(f"model.model_config[{i}]", "POST", f"/c/{c}/model", {"model_config": value}))
    for i, value in enumerate(["", "2", "yes", "\u0000", "1" * 500]):
        add(Post(f"archive.archived[{i}]", "POST", f"/c/{c}/archive", {"archived": value}))
    add(Post("archive.other", "POST", f"/c/{ids.other_conversation}/archive", {"archived": "1"}))
    add(Post("delete.other", "POST", f"/c/{ids.other_conversation}/delete", {}))
    add(Post("delete.huge-id", "POST", "/c/99999999999999999999999/delete", {}))
    for i, content in enumerate(["", "a\u0000b", "\u0000", "x" * (max_chars + 1)]):
        for htmx in (False, True):
            add(Post(f"send.content[{i}]{htmx:d}", "POST", f"/c/{c}/send", {"content": content},
                     htmx=htmx))  # fmt: skip
    add(Post("send.archived", "POST", f"/c/{ids.archived}/send", {"content": "hi"}))
    add(Post("send.other", "POST", f"/c/{ids.other_conversation}/send", {"content": "hi"}))
    for htmx in (False, True):
        add(Post(f"cancel.finished{htmx:d}", "POST", f"/runs/{ids.finished_run}/cancel", {},
                 htmx=htmx))  # fmt: skip
        add(Post(f"retry.finished{htmx:d}", "POST", f"/runs/{ids.finished_run}/retry", {},
                 htmx=htmx))  # fmt: skip
    add(Post("cancel.other", "POST", f"/runs/{ids.other_run}/cancel", {}))
    add(Post("cancel.huge-id", "POST", "/runs/99999999999999999999999/cancel", {}))
    add(Post("retry.other", "POST", f"/runs/{ids.other_run}/retry", {}))

    decide = f"/approvals/{a}/decide"
    base = {"decision": "approve", "arguments_hash": "0" * 64}
    for i, (key, value) in enumerate(
        [("decision", ""), ("decision", "maybe"), ("decision", "\u0000"), ("arguments_hash", ""),
         ("arguments_hash", "zz"), ("reason", "\u0000"), ("reason", "x" * 2001),
         ("always_allow", "\u0000")]
    ):  # fmt: skip
        add(Post(f"decide.{key}[{i}]", "POST", decide, {**base, key: value}, htmx=True))
    for decision in ("edit", "preview"):
        for i, value in enumerate(BAD_ARGUMENTS):
            if not isinstance(value, str):
                continue
            data = {**base, "decision": decision, "edited_arguments": value}
            add(Post(f"decide.edited[{decision}][{i}]", "POST", decide, data, htmx=True))
    for i, value in enumerate(['{"key": NaN}', '{"key": "\\u0000"}', nested_list(NESTED)]):
        data = {**base, "decision": "edit", "arguments_json": value}
        add(Post(f"decide.arguments_json[{i}]", "POST", decide, data, htmx=True))
    add(Post("decide.arg", "POST", decide, {**base, "decision": "edit", "arg__key": "a\u0000"},
             htmx=True))  # fmt: skip
    add(Post("decide.other", "POST", f"/approvals/{ids.other_approval}/decide", base, htmx=True))
    add(Post("decide.huge-id", "POST", "/approvals/99999999999999999999999/decide", base))
    # Bodies the form parser itself refuses: too big, too many fields, not a form.
    add(Post("send.too-big", "POST", f"/c/{c}/send", {"content": "x" * 3_000_000}))
    add(Post("send.too-many-fields", "POST", f"/c/{c}/send",
             content=b"&".join(b"f%d=1" % i for i in range(1500)),
             content_type="application/x-www-form-urlencoded"))  # fmt: skip
    add(Post("send.json-body", "POST", f"/c/{c}/send", content=b'{"content": "hi"}',
             content_type="application/json"))  # fmt: skip
    add(Post("send.bad-utf8", "POST", f"/c/{c}/send", content=b"content=%ff%fe%00",
             content_type="application/x-www-form-urlencoded"))  # fmt: skip
    add(Post("send.multipart-garbage", "POST", f"/c/{c}/send", content=b"--x\r\n\r\n",
             content_type="multipart/form-data; boundary=x"))  # fmt: skip
    add(Post("rename.bad-charset", "POST", f"/c/{c}/rename", content=b"title=abc",
             content_type="application/x-www-form-urlencoded; charset=nope"))  # fmt: skip
    add(Post("login.nul", "POST", "/accounts/login/", {"login": "a\u0000@x.io", "password": "p"}))
    add(
        Post(
            "login.huge", "POST", "/accounts/login/", {"login": "a@x.io", "password": "p" * 90_000}
        )
    )
    add(Post("signup.nul", "POST", "/accounts/signup/",
             {"email": "\u0000@x.io", "password1": "p", "password2": "q"}))  # fmt: skip

    # GETs that take input.
    for i, before in enumerate(["²", "-1", "9" * 30, "", "\u0000", "1e3", "abc"]):
        add(Post(f"earlier.before[{i}]", "GET", f"/c/{c}/earlier", {"before": before}, htmx=True))
    for i, after in enumerate(["garbage", "\u0000", "x" * 5000, "2024-01-01T00:00:00|²"]):
        add(Post(f"more.after[{i}]", "GET", "/c/more", {"after": after}, htmx=True))
    for i, params in enumerate(
        [{"status": "bogus"}, {"tool": "\u0000"}, {"tool": "x" * 500}, {"status": "\u0000"}]
    ):  # fmt: skip
        add(Post(f"approvals.filters[{i}]", "GET", "/approvals/", params))
    # The pager's page: Paginator.get_page shows the first or the last page instead.
    for i, page in enumerate(["²", "-1", "9" * 30, "\u0000"]):
        add(Post(f"approvals.page[{i}]", "GET", "/approvals/", {"page": page}, bad=False))
    add(Post("approval.other", "GET", f"/approvals/{ids.other_approval}/"))
    add(Post("approval.huge-id", "GET", "/approvals/99999999999999999999999/"))
    for i, period in enumerate(["bogus", "\u0000", "x" * 5000]):
        add(Post(f"usage.period[{i}]", "GET", "/usage/", {"period": period}, bad=False))
    for i, relpath in enumerate(["../../etc/passwd", "%00", "a%00b", "/etc/passwd", "x" * 5000]):
        add(Post(f"workspace[{i}]", "GET", f"/tools/workspace/{c}/{relpath}"))
    add(Post("workspace.other", "GET", f"/tools/workspace/{ids.other_conversation}/a.txt"))
    add(Post("detail.huge-id", "GET", "/c/99999999999999999999999/"))
    add(Post("home.archived", "GET", "/", {"archived": "\u0000"}, bad=False))
    return items
