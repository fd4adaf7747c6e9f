"""Structured logs (``project/logs.py``): JSON lines with the ids of the run, step,
user and tool call bound by the run core, and the trace's ids when a span is on."""

from __future__ import annotations

import io
import json
import logging

import pytest
from opentelemetry.sdk.trace import TracerProvider
from structlog.contextvars import bound_contextvars

from project.logs import logging_config
from tests.conversations.conftest import drive, send
from tools.models import Note
from tools.services import tools_sync


@pytest.fixture
def json_lines(settings):
    """Records of the ``conversations``/``tools`` loggers and ours as JSON, captured."""
    config = logging_config(fmt="json", level="DEBUG")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    formatter_config = dict(config["formatters"]["structured"])
    factory = formatter_config.pop("()")
    handler.setFormatter(factory(**formatter_config))
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield lambda: [json.loads(line) for line in stream.getvalue().splitlines() if line]
    root.removeHandler(handler)
    root.setLevel(old_level)


def test_a_record_is_json_with_the_bound_ids_and_the_trace(json_lines):
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("step") as span, bound_contextvars(run_id=7, step=2):
        logging.getLogger("conversations.engine").warning("lease lost by %s", "w1")
    (record,) = [r for r in json_lines() if r.get("event") == "lease lost by w1"]
    assert record["run_id"] == 7 and record["step"] == 2
    assert record["level"] == "warning" and record["logger"] == "conversations.engine"
    assert record["trace_id"] == format(span.get_span_context().trace_id, "032x")
    assert "timestamp" in record


@pytest.mark.django_db
def test_a_tool_calls_log_carries_the_run_user_and_tool_call(conversation, json_lines, monkeypatch):
    tools_sync()
    Note.objects.create(user=conversation.owner, key="meeting", value="Friday")

    def broken(*_args, **_kwargs):
        raise RuntimeError("the tool's store is down")

    # An unexpected error while running a tool is logged (with the ids), and fails the call.
    monkeypatch.setattr("tools.services._invocation_run", broken)
    run = drive(send(conversation, "what time is it in Tokyo"))
    records = [r for r in json_lines() if r.get("logger") == "tools.services"]
    assert records, json_lines()
    record = records[0]
    assert record["run_id"] == run.pk
    assert record["user_id"] == conversation.owner_id
    assert record["tool"] == "time.now"
    assert record["tool_call_id"].startswith("call_demo_")
    assert "exception" in record


def test_an_unknown_format_is_refused():
    with pytest.raises(ValueError, match="LOG_FORMAT must be json or console"):
        logging_config(fmt="xml", level="INFO")
