"""Structured logs (structlog over the standard library's logging): every record,
Django's and ours alike, carries the ids bound for the work at hand (``run_id``,
``step``, ``user_id``, ``tool_call_id``, bound with ``structlog.contextvars`` by the
run core) and the current trace's ``trace_id`` and ``span_id`` when tracing is on.
Rendered as one JSON object per line (``LOG_FORMAT=json``, the default unless
``DEBUG``) or as readable, coloured lines (``console``). Source: structlog's
"Rendering using structlog-based formatters within logging" recipe.
"""

from __future__ import annotations

from typing import Any

import structlog
from opentelemetry import trace


def add_trace_ids(_logger: Any, _method: str, event: dict[str, Any]) -> dict[str, Any]:
    """A structlog processor: the current span's ``trace_id`` and ``span_id`` (hex, as
    OpenTelemetry prints them), when a span is recording."""
    context = trace.get_current_span().get_span_context()
    if context.is_valid:
        event.setdefault("trace_id", format(context.trace_id, "032x"))
        event.setdefault("span_id", format(context.span_id, "016x"))
    return event


def logging_config(*, fmt: str, level: str) -> dict[str, Any]:
    """The ``LOGGING`` dict for ``fmt`` (``json`` or ``console``) at ``level``; also
    configures structlog for code that logs through it. ``ValueError`` for another
    ``fmt``."""
    if fmt not in ("json", "console"):
        raise ValueError(f"LOG_FORMAT must be json or console, not {fmt!r}.")
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        add_trace_ids,
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "structured": {
                "()": structlog.stdlib.ProcessorFormatter,
                "foreign_pre_chain": shared,
                "processors": [
                    structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.format_exc_info,
                    renderer,
                ],
            }
        },
        "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "structured"}},
        "root": {"handlers": ["console"], "level": level},
        "loggers": {
            "django": {"handlers": ["console"], "level": level, "propagate": False},
            "LiteLLM": {"level": "WARNING"},
            "httpx": {"level": "WARNING"},
        },
    }
