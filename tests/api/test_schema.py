"""The served OpenAPI schema (``/v1/openapi.json``) against the API itself, with
schemathesis: requests generated from the schema for every operation, each answer
checked for a server error (none may be 5xx) and for conformance with the
schema's response for its status code. Bounded (``MAX_EXAMPLES`` per operation)
so it takes well under a minute."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from project.wsgi import application
from tests.api.conftest import key_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(180)]

MAX_EXAMPLES = 30


def test_every_operation_answers_as_its_schema_says(user, demo_model):
    schema = schemathesis.openapi.from_wsgi("/v1/openapi.json", application)
    headers = {"Authorization": f"Bearer {key_for(user)}"}
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {f"{op.method.upper()} {op.path}" for op in operations} == {
        "GET /v1/models",
        "POST /v1/chat/completions",
        "GET /v1/approvals",
        "GET /v1/approvals/{approval_id}",
        "POST /v1/approvals/{approval_id}/approve",
        "POST /v1/approvals/{approval_id}/deny",
    }
    checked: list[int] = []
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=MAX_EXAMPLES,
            deadline=None,
            database=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        def call(case) -> None:
            response = case.call_and_validate(
                headers=headers, checks=[not_a_server_error, response_schema_conformance]
            )
            checked.append(response.status_code)

        call()
    assert len(checked) >= len(operations) * 5
    assert all(status < 500 for status in checked)
