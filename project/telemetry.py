"""OpenTelemetry tracing for each process (web, worker), off unless the standard
``OTEL_*`` environment variables ask for it.

On when ``OTEL_TRACES_EXPORTER`` names an exporter (``otlp``, ``console``) or
``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``…_TRACES_ENDPOINT``) is set, and
``OTEL_SDK_DISABLED`` is not ``true``; the OTLP exporter (HTTP/protobuf) reads its
endpoint, headers and timeouts from those variables itself, and the service name from
``OTEL_SERVICE_NAME`` (default ``tollgate-web`` / ``tollgate-worker``). Then Django,
Celery (context from the web to the worker through each task's headers), psycopg,
Redis and httpx (the model calls litellm makes) are instrumented, and the run core's
own spans (``conversations.tracing``) are recorded under one trace per run.
Source: the OpenTelemetry Python SDK's environment configuration.
"""

from __future__ import annotations

import os
import threading

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator

_lock = threading.Lock()
# Installed once per process; a forking pool's children inherit it (the SDK's batch
# processor restarts its thread after a fork).
_done = False


class RunIdGenerator(RandomIdGenerator):
    """Random ids, except for a span begun inside :func:`forced_ids`: then the ids
    given, so that the spans of one run, recorded by different processes at different
    times, share one trace and one root (``conversations.tracing``)."""

    _forced = threading.local()

    def generate_span_id(self) -> int:
        forced = getattr(self._forced, "ids", None)
        return forced[1] if forced else super().generate_span_id()

    def generate_trace_id(self) -> int:
        forced = getattr(self._forced, "ids", None)
        return forced[0] if forced else super().generate_trace_id()


class forced_ids:
    """``with forced_ids(trace_id, span_id):`` the next span begun on this thread gets
    these ids (when the tracer provider uses :class:`RunIdGenerator`)."""

    def __init__(self, trace_id: int, span_id: int) -> None:
        self.ids = (trace_id, span_id)

    def __enter__(self) -> None:
        RunIdGenerator._forced.ids = self.ids

    def __exit__(self, *_exc: object) -> None:
        RunIdGenerator._forced.ids = None


def telemetry_enabled() -> bool:
    """Whether the ``OTEL_*`` environment asks for traces (see the module's text)."""
    if os.environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return False
    exporter = os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter == "none":
        return False
    return bool(
        exporter
        or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )


def _exporter() -> SpanExporter:
    if os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "console":
        return ConsoleSpanExporter()
    # Only when exporting: the exporter brings protobuf and an HTTP client.
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()


def telemetry_provider(exporter: SpanExporter | None = None, *, service: str) -> TracerProvider:
    """A tracer provider with :class:`RunIdGenerator`, exporting to ``exporter``
    (default: the one the environment names) in batches; not installed."""
    provider = TracerProvider(
        resource=Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", service)}),
        id_generator=RunIdGenerator(),
    )
    provider.add_span_processor(BatchSpanProcessor(exporter or _exporter()))
    return provider


def telemetry_setup(*, service: str) -> bool:
    """Install tracing for this process if :func:`telemetry_enabled`; idempotent.
    ``service``: the default service name (``tollgate-web``, ``tollgate-worker``).
    Returns whether tracing is on."""
    global _done
    if not telemetry_enabled():
        return False
    with _lock:
        if _done:
            return True
        # Only when tracing is on: each instrumentation patches its library when used.
        from opentelemetry.instrumentation.celery import CeleryInstrumentor
        from opentelemetry.instrumentation.django import DjangoInstrumentor
        from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
        from opentelemetry.instrumentation.psycopg import PsycopgInstrumentor
        from opentelemetry.instrumentation.redis import RedisInstrumentor

        trace.set_tracer_provider(telemetry_provider(service=service))
        _done = True
        DjangoInstrumentor().instrument()
        CeleryInstrumentor().instrument()
        PsycopgInstrumentor().instrument(enable_commenter=False)
        RedisInstrumentor().instrument()
        HTTPXClientInstrumentor().instrument()
        return True
