"""The run core's own spans, recorded from its loop events (``conversations.loopevents``):
one trace per run, whose root is the run and whose children are its model calls
(OpenTelemetry's GenAI semantic conventions: ``gen_ai.request.model``,
``gen_ai.usage.input_tokens``, …), gate decisions, waits for a person and tool
executions.

A run's steps happen in several processes at different times, so each span is
recorded when what it measures has ended, with its start and end times from the
event, and the run's trace and root span ids are derived from the run's id
(:func:`run_trace_ids`): every process puts its spans under the same root, which is
recorded last, at ``run.finished``. Off (nothing recorded, no query) unless tracing
is installed (``project.telemetry``).
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import (
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
)

from conversations.loopevents import LoopEvent
from project.telemetry import forced_ids


def run_trace_ids(run_id: int) -> tuple[int, int]:
    """``(trace_id, span_id)`` of run ``run_id``'s trace and root span: the same in
    every process of one deployment (``TOLLGATE_DEPLOYMENT``), distinct across them."""
    digest = hashlib.sha256(f"{settings.TOLLGATE_DEPLOYMENT}:run:{run_id}".encode()).digest()
    return int.from_bytes(digest[:16], "big") or 1, int.from_bytes(digest[16:24], "big") or 1


def _run_parent(run_id: int) -> Any:
    """A context whose current span is run ``run_id``'s root (remote: it is recorded
    at the run's end, maybe by another process)."""
    trace_id, root_id = run_trace_ids(run_id)
    return trace.set_span_in_context(
        NonRecordingSpan(SpanContext(trace_id, root_id, is_remote=True, trace_flags=TraceFlags(1)))
    )


def _on(provider: Any) -> bool:
    return isinstance(provider, TracerProvider)


@contextlib.contextmanager
def run_context(run_id: int) -> Iterator[None]:
    """Make run ``run_id``'s trace the current one while the block runs (nothing
    while tracing is off): a Celery task sent inside carries it (the Celery
    instrumentation puts it in the task's headers), so the worker's spans of the
    step, its queries and its model call's HTTP requests join the run's trace."""
    if not _on(trace.get_tracer_provider()):
        yield
        return
    token = otel_context.attach(_run_parent(run_id))
    try:
        yield
    finally:
        otel_context.detach(token)


def tracing_record(
    *,
    run_id: int,
    name: str,
    start: datetime,
    end: datetime,
    attributes: dict[str, Any] | None = None,
    provider: Any = None,
) -> None:
    """Record a span ``name`` from ``start`` to ``end`` under run ``run_id``'s root
    (such as the WebSocket message that started the run); nothing while tracing is off."""
    provider = provider or trace.get_tracer_provider()
    if not _on(provider):
        return
    span = provider.get_tracer("tollgate.runs").start_span(
        name,
        context=_run_parent(run_id),
        start_time=_ns(start),
        attributes={"tollgate.run_id": run_id, **(attributes or {})},
    )
    span.end(end_time=_ns(end))


def _ns(at: datetime) -> int:
    return int(at.timestamp() * 1_000_000_000)


def _before(at: datetime, ms: Any) -> datetime:
    return at - timedelta(milliseconds=ms or 0)


def tracing_observe(event: LoopEvent, *, provider: Any = None) -> None:
    """Loop-event subscriber: record the span that ``event`` ends. ``provider``: the
    tracer provider (default: the process's, when tracing is installed)."""
    provider = provider or trace.get_tracer_provider()
    if not _on(provider):
        return  # tracing is off
    tracer = provider.get_tracer("tollgate.runs")
    trace_id, root_id = run_trace_ids(event.run_id)
    run_attributes = {"tollgate.run_id": event.run_id, "tollgate.step": event.step}
    data = event.data
    if event.name == "run.finished":
        created = datetime.fromisoformat(data["created_at"]) if data.get("created_at") else None
        with forced_ids(trace_id, root_id):
            span = tracer.start_span(
                f"run {event.run_id}",
                context=trace.set_span_in_context(trace.INVALID_SPAN),
                kind=SpanKind.INTERNAL,
                start_time=_ns(created or event.at),
                attributes={
                    **run_attributes,
                    "tollgate.conversation_id": event.conversation_id,
                    "tollgate.user_id": event.user_id or 0,
                    "tollgate.run.status": data["status"],
                    "tollgate.run.steps": data["steps"],
                },
            )
        if data["status"] == "failed":
            span.set_status(Status(StatusCode.ERROR, data.get("error") or None))
        span.end(end_time=_ns(event.at))
        return
    parent = trace.set_span_in_context(
        NonRecordingSpan(SpanContext(trace_id, root_id, is_remote=True, trace_flags=TraceFlags(1)))
    )
    name: str
    kind = SpanKind.INTERNAL
    start = event.at
    attributes: dict[str, Any] = dict(run_attributes)
    failed = False
    if event.name == "step.finished":
        model = str(data.get("model") or "")
        name, kind = f"chat {model}", SpanKind.CLIENT
        start = _before(event.at, data.get("latency_ms"))
        attributes.update({
            "gen_ai.operation.name": "chat",
            "gen_ai.request.model": model,
            "gen_ai.usage.input_tokens": data.get("prompt_tokens") or 0,
            "gen_ai.usage.output_tokens": data.get("completion_tokens") or 0,
            "gen_ai.response.finish_reasons": [data.get("outcome") or ""],
            "tollgate.tool_calls": data.get("tool_calls") or 0,
        })  # fmt: skip
        if data.get("cost_usd") is not None:
            attributes["tollgate.cost_usd"] = float(data["cost_usd"])
        if data.get("ttft_ms") is not None:
            attributes["tollgate.ttft_ms"] = data["ttft_ms"]
        failed = data.get("outcome") == "failed"
    elif event.name in ("tool_call.gated", "tool_call.decided", "tool_call.executed"):
        attributes.update(
            {"gen_ai.tool.name": data["tool"], "gen_ai.tool.call.id": data["tool_call_id"]}
        )
        if event.name == "tool_call.gated":
            name = f"gate {data['tool']}"
            attributes["tollgate.gate.decision"] = data["decision"]
        elif event.name == "tool_call.decided":
            name = f"approval {data['tool']}"
            start = _before(event.at, data.get("waited_ms"))
            attributes["tollgate.approval.decision"] = data["decision"]
        else:
            name = f"execute_tool {data['tool']}"
            attributes["gen_ai.operation.name"] = "execute_tool"
            start = _before(event.at, data.get("duration_ms"))
            failed = data["status"] == "failed"
    else:
        return  # run.started, step.started: their ends carry them
    span = tracer.start_span(
        name, context=parent, kind=kind, start_time=_ns(start), attributes=attributes
    )
    if failed:
        span.set_status(Status(StatusCode.ERROR))
    span.end(end_time=_ns(event.at))
