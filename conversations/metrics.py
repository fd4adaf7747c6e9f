"""Prometheus metrics at ``/metrics``: what the run core does, counted from its loop
events (``conversations.loopevents``), plus budget and rate-limit refusals and the
approvals waiting now.

Families (all prefixed ``tollgate_``):

- ``runs_total{outcome}``: runs ended (completed, failed, cancelled);
- ``ttft_seconds{model}``, ``step_seconds{model}``: time to the first token and the
  length of each model call (histograms, seconds);
- ``llm_tokens_total{model,direction}`` (input, output) and ``llm_cost_usd_total{model}``;
- ``provider_errors_total{kind}``: model calls that failed, by cause;
- ``tool_seconds{tool,status}``: tool executions (histogram, seconds);
- ``approval_decision_seconds{decision}``: from a request to its decision (seconds);
- ``refusals_total{reason}``: calls refused before they were made (budget, rate_limit,
  no_prices);
- ``approvals_pending``: approval requests pending now (read at scrape time).

With several processes (daphne and Celery workers) set ``PROMETHEUS_MULTIPROC_DIR`` to
a directory every process can write, emptied at deploy: each process writes its figures
there and ``/metrics`` adds them up (prometheus-client's multiprocess mode). Without it
``/metrics`` shows the serving process's figures only (the embedded mode: one process).
"""

from __future__ import annotations

import hmac
import ipaddress
import os
from collections.abc import Iterator
from decimal import Decimal

from django.conf import settings
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from approvals.selectors import approvals_pending_total
from conversations.loopevents import LoopEvent

_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120)

RUNS = Counter("tollgate_runs", "Runs ended, by outcome.", ["outcome"])
TTFT = Histogram(
    "tollgate_ttft_seconds", "Time to the first token of a model call.", ["model"],
    buckets=_LATENCY_BUCKETS,
)  # fmt: skip
STEP = Histogram(
    "tollgate_step_seconds", "Length of a model call.", ["model"], buckets=_LATENCY_BUCKETS
)
TOKENS = Counter("tollgate_llm_tokens", "Tokens of model calls.", ["model", "direction"])
COST = Counter("tollgate_llm_cost_usd", "What model calls cost (USD).", ["model"])
PROVIDER_ERRORS = Counter(
    "tollgate_provider_errors", "Model calls that failed, by cause.", ["kind"]
)
TOOLS = Histogram(
    "tollgate_tool_seconds", "Tool executions.", ["tool", "status"], buckets=_LATENCY_BUCKETS
)
DECISIONS = Histogram(
    "tollgate_approval_decision_seconds", "From an approval request to its decision.",
    ["decision"], buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600),
)  # fmt: skip
REFUSALS = Counter("tollgate_refusals", "Model calls refused before they were made.", ["reason"])


def _model(event: LoopEvent) -> str:
    return str(event.data.get("model") or "unknown")


def metrics_observe(event: LoopEvent) -> None:
    """Loop-event subscriber (connected in ``ConversationsConfig.ready``): count
    ``event`` into the families above."""
    data = event.data
    if event.name == "run.finished":
        RUNS.labels(outcome=data["status"]).inc()
    elif event.name == "step.finished":
        model = _model(event)
        if data.get("ttft_ms") is not None:
            TTFT.labels(model=model).observe(data["ttft_ms"] / 1000)
        if data.get("latency_ms") is not None:
            STEP.labels(model=model).observe(data["latency_ms"] / 1000)
        TOKENS.labels(model=model, direction="input").inc(data.get("prompt_tokens") or 0)
        TOKENS.labels(model=model, direction="output").inc(data.get("completion_tokens") or 0)
        if data.get("cost_usd") is not None:
            COST.labels(model=model).inc(float(Decimal(data["cost_usd"])))
        if data.get("outcome") == "failed":
            PROVIDER_ERRORS.labels(kind=data.get("error_kind") or "unknown").inc()
    elif event.name == "tool_call.executed":
        if data.get("duration_ms") is not None:
            TOOLS.labels(tool=data["tool"], status=data["status"]).observe(
                data["duration_ms"] / 1000
            )
    elif event.name == "tool_call.decided" and data.get("waited_ms") is not None:
        DECISIONS.labels(decision=data["decision"]).observe(data["waited_ms"] / 1000)


def metrics_refusal(*, reason: str) -> None:
    """Count a model call refused before it was made (``reason``: budget, rate_limit,
    no_prices)."""
    REFUSALS.labels(reason=reason).inc()


class _PendingApprovals(Collector):
    """``tollgate_approvals_pending``, read from the database when scraped."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily(
            "tollgate_approvals_pending",
            "Approval requests waiting for a decision now.",
            value=approvals_pending_total(),
        )


def metrics_allowed(*, authorization: str, remote_addr: str) -> bool:
    """Whether a scrape may read ``/metrics``: it carries ``Authorization: Bearer
    <TOLLGATE_METRICS_TOKEN>`` (compared in constant time), or comes from an address in
    ``TOLLGATE_METRICS_ALLOWED_IPS`` (addresses or networks). Neither set: nobody."""
    token = settings.TOLLGATE_METRICS_TOKEN
    if token:
        scheme, _, given = authorization.partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(given.strip(), token):
            return True
    try:
        address = ipaddress.ip_address(remote_addr)
    except ValueError:
        return False
    for allowed in settings.TOLLGATE_METRICS_ALLOWED_IPS:
        try:
            if address in ipaddress.ip_network(allowed, strict=False):
                return True
        except ValueError:
            continue
    return False


def metrics_render() -> tuple[bytes, str]:
    """The exposition (text format) and its content type: every process's figures in
    the multiprocess mode, else this process's; the pending approvals gauge read now."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        figures: CollectorRegistry = CollectorRegistry()
        MultiProcessCollector(figures)
    else:
        figures = REGISTRY
    now = CollectorRegistry()
    now.register(_PendingApprovals())
    return generate_latest(figures) + generate_latest(now), CONTENT_TYPE_LATEST
