"""How a run that failed is answered (``api.views.run_error``): the status code, the
error's code, ``Retry-After`` for a rate limit, and ``x-should-retry: false`` where
sending the message again would only make another failed run."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from api.views import run_error
from conversations.selectors import RunReply


def _failed(kind: str, refused: str = "", **extra) -> RunReply:
    return RunReply(
        run_id=3, conversation_id=2, status="failed", text="", admitted=True,
        error="Why it failed.", error_kind=kind, refused=refused, **extra,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("reply", "status", "code"),
    [
        (_failed("budget", "budget"), 402, "insufficient_quota"),
        (_failed("budget", "no_prices"), 402, "model_unpriced"),
        (_failed("guardrail"), 400, "guardrail_blocked"),
        (_failed("context_too_long"), 400, "context_length_exceeded"),
        (_failed("provider_down"), 502, "provider_down"),
        (_failed("internal"), 500, "server_error"),
    ],
)
def test_a_failed_run_is_answered_once_with_its_status(reply, status, code):
    error = run_error(reply)
    assert (error.status, error.code) == (status, code)
    assert error.headers == {"x-should-retry": "false"}
    body = error.body()
    assert body["error"]["message"] == "Why it failed."
    assert (body["tollgate_conversation_id"], body["tollgate_run_id"]) == (2, 3)


def test_a_rate_limit_says_when_to_retry():
    later = timezone.now() + timedelta(seconds=41.2)
    error = run_error(_failed("budget", "rate_limit", retry_not_before=later))
    assert (error.status, error.code) == (429, "rate_limit_exceeded")
    assert error.headers["Retry-After"] in ("41", "42")
    assert error.body()["error"]["type"] == "rate_limit_error"


def test_completed_and_stopped_runs_are_no_error():
    for status in ("completed", "cancelled"):
        reply = RunReply(run_id=1, conversation_id=1, status=status, text="hi", admitted=True)
        assert run_error(reply) is None
