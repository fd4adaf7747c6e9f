"""Guardrail checks on a corpus made in ``guardrail_corpus``; who they apply to; the
cache; the admin's "test this guardrail" form and its audit trail."""

from __future__ import annotations

import pytest

from approvals.guardrails import (
    PII_ENTITIES,
    GuardrailConfigError,
    GuardrailRule,
    guardrail_config_check,
    guardrails_run,
    pii_find,
    redact,
)
from approvals.models import Guardrail
from approvals.selectors import guardrails_for
from approvals.services import guardrails_apply, guardrails_apply_arguments
from audit.models import AuditEvent
from tests.approvals import guardrail_corpus as corpus
from tests.factories import GroupFactory, GuardrailFactory, UserFactory

RECALL_MIN = 0.95


def _rule(kind: str, action: str, stage: str = "user_input", **config) -> GuardrailRule:
    return GuardrailRule(
        id=1, name=f"{kind} {action}", stage=stage, kind=kind, action=action, config=config,
        order=1, description=f"{kind} check",
    )  # fmt: skip


def _caught(sample: corpus.Sample) -> bool:
    """The sample's value is gone from the redacted text, replaced by its label."""
    redacted = redact(sample.text, pii_find(sample.text))
    return sample.value not in redacted and f"[{sample.label}]" in redacted


def test_the_corpus_is_as_large_as_the_issue_asks():
    samples = corpus.pii_samples()
    assert len(samples) >= 30
    assert {s.label for s in samples} == set(PII_ENTITIES)
    assert len(corpus.INJECTIONS) >= 20
    assert len(corpus.CLEAN) >= 20


@pytest.mark.parametrize("label", ["EMAIL", "PHONE", "CREDIT_CARD", "IBAN"])
def test_pii_recall_per_kind(label):
    samples = [s for s in corpus.pii_samples() if s.label == label]
    assert len(samples) >= 10
    missed = [s.text for s in samples if not _caught(s)]
    assert 1 - len(missed) / len(samples) >= RECALL_MIN, missed


def test_ip_addresses_and_national_ids_are_found():
    samples = corpus.ips() + corpus.national_ids()
    assert [s.text for s in samples if not _caught(s)] == []


def test_checksums_keep_look_alikes_out():
    """A 16-digit number that fails Luhn, an IBAN with wrong check digits and an
    out-of-range IPv4 are not personal data; an order number is not a phone."""
    assert pii_find("Tracking 4111 1111 1111 1112 shipped") == []
    assert pii_find("Account DE00370400440532013000 closed") == []
    assert pii_find("Version 300.1.2.999 is out") == []
    assert pii_find("Order 48213 is on its way") == []


def test_no_clean_text_is_touched_by_any_guardrail():
    rules = [
        _rule("pii", "block"),
        _rule("injection", "block", stage="tool_output"),
        _rule("keywords", "block", words=["password", "secret"]),
    ]
    for text in corpus.CLEAN:
        outcome = guardrails_run(rules=rules, text=text, stage="tool_output")
        assert not outcome.blocked and outcome.acts == [], text


def test_injection_samples_in_tool_output_are_flagged():
    block = [_rule("injection", "block", stage="tool_output")]
    missed = [
        text
        for text in corpus.INJECTIONS
        if not guardrails_run(rules=block, text=text, stage="tool_output").blocked
    ]
    assert missed == []
    warned = guardrails_run(
        rules=[_rule("injection", "warn", stage="tool_output")],
        text=corpus.INJECTIONS[0],
        stage="tool_output",
    )
    assert warned.acts[0].action == "warn"
    assert warned.text.startswith("[Guardrail") and warned.text.endswith(corpus.INJECTIONS[0])


def test_rules_run_in_order_and_a_block_stops_the_rest():
    text = "mail jane@example.com the secret plan"
    outcome = guardrails_run(
        rules=[
            _rule("pii", "redact"),
            _rule("keywords", "block", words=["secret"]),
            _rule("length", "warn", max_chars=5),
        ],
        text=text,
    )
    assert [a.action for a in outcome.acts] == ["redact", "block"]
    assert outcome.text == "mail [EMAIL] the secret plan"
    assert outcome.acts[0].found == {"EMAIL": 1}
    assert "keywords check" in outcome.block_message()


def test_regex_keywords_and_length():
    regex = guardrails_run(
        rules=[_rule("regex", "redact", patterns=[r"PRJ-\d+"])], text="see PRJ-42"
    )
    assert regex.text == "see [REDACTED]"
    words = guardrails_run(
        rules=[_rule("keywords", "redact", words=["Acme"], label="CLIENT")],
        text="acme and Acmeville",
    )
    assert words.text == "[CLIENT] and Acmeville"  # whole words only
    long = guardrails_run(rules=[_rule("length", "block", max_chars=10)], text="x" * 11)
    assert long.blocked and long.acts[0].found == {"TOO_LONG": 1}


@pytest.mark.parametrize(
    ("kind", "config", "error"),
    [
        ("length", {}, "max_chars"),
        ("regex", {"patterns": ["("]}, "Not a regular expression"),
        ("keywords", {"words": []}, "words"),
        ("pii", {"entities": ["SHOE_SIZE"]}, "entities"),
        ("pii", {"region": "XX"}, "region"),
        ("injection", {"threshold": 0}, "threshold"),
        ("json_schema", {}, "schema"),
        ("json_schema", {"schema": {"type": 5}}, "Not a valid JSON Schema"),
    ],
)
def test_bad_config_is_refused_with_a_reason(kind, config, error):
    with pytest.raises(GuardrailConfigError, match=error):
        guardrail_config_check(kind=kind, config=config)


# -- who, the cache, the audit ---------------------------------------------------------


@pytest.mark.django_db
def test_guardrails_apply_to_their_user_group_or_everyone():
    member, outsider = UserFactory(), UserFactory()
    group = GroupFactory()
    member.groups.add(group)
    everyone = GuardrailFactory()
    own = GuardrailFactory(user=outsider)
    grouped = GuardrailFactory(group=group)
    GuardrailFactory(enabled=False)
    GuardrailFactory(stage="tool_output")
    assert {r.id for r in guardrails_for(user=member, stage="user_input")} == {
        everyone.pk,
        grouped.pk,
    }
    assert {r.id for r in guardrails_for(user=outsider, stage="user_input")} == {
        everyone.pk,
        own.pk,
    }


@pytest.mark.django_db
def test_no_guardrails_cost_no_query_once_cached(user, django_assert_num_queries):
    with django_assert_num_queries(1):
        guardrails_apply(stage="user_input", user=user, text="hello")
    with django_assert_num_queries(0):
        outcome = guardrails_apply(stage="user_input", user=user, text="hello jane@example.com")
    assert outcome.acts == [] and outcome.text == "hello jane@example.com"


@pytest.mark.django_db
def test_a_saved_guardrail_applies_at_once_in_this_process(user):
    guardrails_apply(stage="user_input", user=user, text="warm the cache")
    GuardrailFactory()
    outcome = guardrails_apply(stage="user_input", user=user, text="jane@example.com")
    assert outcome.text == "[EMAIL]"


@pytest.mark.django_db
def test_an_act_is_audited_without_the_text(user):
    GuardrailFactory()
    guardrails_apply(
        stage="user_input", user=user, text="me: jane@example.com", target_type="message",
        target_id=7,
    )  # fmt: skip
    event = AuditEvent.objects.get(action="guardrail.acted")
    assert event.actor_id == user.pk and event.target_id == "7"
    assert event.data["acts"][0]["found"] == {"EMAIL": 1}
    assert "jane" not in str(event.data)


@pytest.mark.django_db
def test_tool_arguments_are_checked_string_by_string(user):
    GuardrailFactory(stage="tool_arguments")
    arguments, outcome = guardrails_apply_arguments(
        user=user,
        arguments={"key": "contact", "to": ["a@example.com", "b@example.org"], "n": 3},
    )
    assert arguments == {"key": "contact", "to": ["[EMAIL]", "[EMAIL]"], "n": 3}
    assert outcome.acts[0].found == {"EMAIL": 2}


# -- admin ------------------------------------------------------------------------------


def _form(**extra) -> dict:
    return {
        "name": "PII",
        "stage": "user_input",
        "kind": "pii",
        "action": "redact",
        "config": "{}",
        "order": 100,
        "enabled": "on",
        "description": "No personal data to the model.",
        **extra,
    }


@pytest.mark.django_db
def test_admin_test_button_shows_the_effect_and_saves_nothing(admin_user, client):
    client.force_login(admin_user)
    response = client.post(
        "/admin/approvals/guardrail/add/",
        _form(sample_text="Call +44 20 7946 0958 or write to jane@example.com", _test="1"),
    )
    assert response.status_code == 200
    page = response.content.decode()
    assert "Call [PHONE] or write to [EMAIL]" in page
    assert "Call +44 20 7946 0958" in page  # the sample stays in its field
    assert not Guardrail.objects.exists()


@pytest.mark.django_db
def test_admin_test_shows_config_errors(admin_user, client):
    client.force_login(admin_user)
    response = client.post(
        "/admin/approvals/guardrail/add/",
        _form(kind="regex", config='{"patterns": ["("]}', sample_text="x", _test="1"),
    )
    assert response.status_code == 200
    assert "Not a regular expression" in response.content.decode()
    assert not Guardrail.objects.exists()


@pytest.mark.django_db
def test_admin_refuses_redacting_injection_checks(admin_user, client):
    client.force_login(admin_user)
    response = client.post(
        "/admin/approvals/guardrail/add/", _form(kind="injection", stage="tool_output")
    )
    assert response.status_code == 200
    assert "cannot redact" in response.content.decode()
    assert not Guardrail.objects.exists()


@pytest.mark.django_db
def test_admin_changes_are_audited(admin_user, client):
    client.force_login(admin_user)
    assert client.post("/admin/approvals/guardrail/add/", _form()).status_code == 302
    guardrail = Guardrail.objects.get()
    client.post(f"/admin/approvals/guardrail/{guardrail.pk}/change/", _form(action="block"))
    client.post(f"/admin/approvals/guardrail/{guardrail.pk}/delete/", {"post": "yes"})
    events = list(AuditEvent.objects.filter(action="guardrail.changed").order_by("sequence"))
    assert [e.data["operation"] for e in events] == ["created", "updated", "deleted"]
    assert {"key": "action", "op": "changed", "old": "redact", "new": "block"} in events[1].data[
        "diff"
    ]


@pytest.mark.django_db
def test_admin_is_for_staff_only(user, client):
    client.force_login(user)
    response = client.post("/admin/approvals/guardrail/add/", _form(sample_text="x", _test="1"))
    assert response.status_code == 302 and "/login" in response["Location"]


def test_structured_output_findings_say_what_is_wrong():
    schema = {"type": "object", "required": ["a"], "properties": {"a": {"type": "integer"}}}
    rule = _rule("json_schema", "block", stage="model_output", schema=schema)
    assert guardrails_run(rules=[rule], text='{"a": 1}').acts == []
    assert guardrails_run(rules=[rule], text='```json\n{"a": 1}\n```').acts == []
    wrong = guardrails_run(rules=[rule], text='{"a": "one"}')
    assert wrong.blocked and wrong.acts[0].found == {"SCHEMA": 1}
    assert "a: 'one' is not of type 'integer'" in wrong.acts[0].detail
    assert "detail" not in wrong.acts[0].as_dict()  # never stored or audited
    prose = guardrails_run(rules=[rule], text="Sure! a is 1.")
    assert prose.acts[0].found == {"INVALID_JSON": 1}
