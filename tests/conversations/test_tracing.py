"""The run core's spans (``conversations.tracing``) captured by an in-memory exporter:
one trace per run, the run as its root, model calls with GenAI attributes, the gate,
the wait for a person and the tool's execution under it."""

from __future__ import annotations

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from conversations.loopevents import loop_event_subscribe
from conversations.tracing import run_trace_ids, tracing_observe
from project.telemetry import RunIdGenerator, telemetry_enabled
from tests.conversations.conftest import drive_approved_tool_call
from tests.conversations.test_loopevents import _deliver

pytestmark = pytest.mark.django_db


@pytest.fixture
def exporter():
    spans = InMemorySpanExporter()
    provider = TracerProvider(id_generator=RunIdGenerator())
    provider.add_span_processor(SimpleSpanProcessor(spans))
    unsubscribe = loop_event_subscribe(lambda event: tracing_observe(event, provider=provider))
    yield spans
    unsubscribe()


def test_a_run_with_an_approved_tool_call_is_one_trace_under_the_run(
    conversation, exporter, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks() as callbacks:
        run = drive_approved_tool_call(conversation)
    _deliver(callbacks)

    spans = exporter.get_finished_spans()
    model = conversation.model_config.name
    assert [s.name for s in spans] == [
        f"chat {model}",
        "gate notes.delete",
        "approval notes.delete",
        "execute_tool notes.delete",
        f"chat {model}",
        f"run {run.pk}",
    ]
    trace_id, root_id = run_trace_ids(run.pk)
    assert {s.context.trace_id for s in spans} == {trace_id}  # one trace
    root = spans[-1]
    assert root.context.span_id == root_id and root.parent is None
    assert all(s.parent.span_id == root_id for s in spans[:-1])  # the tree: all under the run
    assert root.attributes["tollgate.run.status"] == "completed"
    assert root.start_time <= min(s.start_time for s in spans)
    assert root.end_time >= max(s.end_time for s in spans[:-1])

    first, last = spans[0], spans[4]
    assert first.attributes["gen_ai.operation.name"] == "chat"
    assert first.attributes["gen_ai.request.model"] == model
    assert first.attributes["gen_ai.usage.input_tokens"] > 0
    assert first.attributes["gen_ai.usage.output_tokens"] >= 0
    assert tuple(first.attributes["gen_ai.response.finish_reasons"]) == ("tool_calls",)
    assert tuple(last.attributes["gen_ai.response.finish_reasons"]) == ("answer",)
    assert first.end_time - first.start_time >= 0
    gate, wait, tool = spans[1:4]
    assert gate.attributes["tollgate.gate.decision"] == "ask"
    assert wait.attributes["tollgate.approval.decision"] == "approved"
    assert wait.start_time < wait.end_time <= tool.end_time
    assert tool.attributes["gen_ai.tool.name"] == "notes.delete"
    assert tool.attributes["gen_ai.tool.call.id"] == gate.attributes["gen_ai.tool.call.id"]
    assert tool.status.status_code != StatusCode.ERROR


def test_trace_ids_are_per_run_and_per_deployment(settings):
    assert run_trace_ids(1) == run_trace_ids(1)
    assert run_trace_ids(1) != run_trace_ids(2)
    one = run_trace_ids(1)
    settings.TOLLGATE_DEPLOYMENT = "another"
    assert run_trace_ids(1) != one


def test_tracing_is_off_unless_the_environment_asks(monkeypatch):
    for name in ("OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_SDK_DISABLED",
                 "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    assert not telemetry_enabled()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")
    assert telemetry_enabled()
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    assert not telemetry_enabled()
    monkeypatch.delenv("OTEL_SDK_DISABLED")
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    assert not telemetry_enabled()
