from __future__ import annotations

from django.apps import AppConfig
from django.core.checks import register

from approvals.signals import approval_decided, approval_deciding
from knowledge.signals import embedder_query
from prompts.signals import model_names_query
from tools.signals import run_cancel_query


class ConversationsConfig(AppConfig):
    """Conversations, messages, runs (the agent loop), model configs and the LLM gateway.

    ``ready`` connects this app to the signals of the apps below it (they may not
    import it) and to its own state machine's ``run_step_due`` and ``run_part_ended``
    (Compare), subscribes the metrics and the run's spans to the loop events, and
    registers its deploy check of the WebSocket's origins.
    """

    name = "conversations"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Imported here, not at the top: these modules import models, which
        # Django's app registry allows only once it is ready.
        from approvals.models import ApprovalRequest
        from conversations import (
            agents,
            chains,
            checks,
            compare,
            dispatch,
            embedding,
            heartbeat,
            metrics,
            selectors,
            toolphase,
            tracing,
        )
        from conversations.evaluations import evaluation_due
        from conversations.loopevents import loop_event_subscribe
        from conversations.models import Run
        from conversations.runs import run_part_ended, run_step_due
        from project.health import health_sections
        from prompts.models import Evaluation, PromptVersion
        from tools.models import ToolInvocation
        from tools.registry import registry

        approval_deciding.connect(
            toolphase.approval_lock_subject, sender=ApprovalRequest, dispatch_uid="conversations"
        )
        approval_decided.connect(
            toolphase.approval_decided, sender=ApprovalRequest, dispatch_uid="conversations"
        )
        run_cancel_query.connect(
            selectors.run_cancel_requested, sender=ToolInvocation, dispatch_uid="conversations"
        )
        model_names_query.connect(
            selectors.model_names_enabled, sender=PromptVersion, dispatch_uid="conversations"
        )
        embedder_query.connect(embedding.embedder_configured, dispatch_uid="conversations")
        run_step_due.connect(dispatch.run_step_due_received, sender=Run, dispatch_uid="dispatch")
        if not getattr(self, "_metrics_subscribed", False):  # ready() may run twice in tests
            loop_event_subscribe(metrics.metrics_observe)
            loop_event_subscribe(tracing.tracing_observe)
            self._metrics_subscribed = True
        evaluation_due.connect(
            dispatch.evaluation_due_received, sender=Evaluation, dispatch_uid="dispatch"
        )
        health_sections.connect(heartbeat.healthz_models, dispatch_uid="conversations")
        run_part_ended.connect(compare.compare_part_ended, sender=Run, dispatch_uid="compare")
        run_part_ended.connect(chains.chain_part_ended, sender=Run, dispatch_uid="chains")
        run_part_ended.connect(toolphase.agent_part_ended, sender=Run, dispatch_uid="subagents")
        registry.dynamic_register(agents.handoff_spec)  # handoff_to_<agent>
        registry.dynamic_register(agents.ask_spec)  # ask_agent_<agent>
        register(checks.websocket_origins_check, "tollgate", deploy=True)
