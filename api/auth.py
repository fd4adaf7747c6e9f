"""Who a request is: its API key (``Authorization: Bearer <key>``), checked by
``accounts.services.api_key_authenticate`` (constant-time, audited refusals).

Each operation names the scopes that permit it (:data:`CHAT`, :data:`MODELS`,
:data:`APPROVALS_READ`, :data:`APPROVALS_DECIDE`); a key with none of them is
refused with 403. ``request.auth`` is then the ``ApiKey`` (its ``user`` loaded).
"""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest
from ninja.security import HttpBearer

from accounts.http import client_ip
from accounts.models import ApiKey
from accounts.services import ApiKeyRefused, api_key_authenticate
from api.errors import ApiError
from project.dbthreads import db_run

S = ApiKey.Scope

CHAT = frozenset({S.CHAT})
MODELS = frozenset({S.CHAT, S.READ})
APPROVALS_READ = frozenset({S.APPROVALS, S.READ})
APPROVALS_DECIDE = frozenset({S.APPROVALS})


class ApiKeyAuth(HttpBearer):
    """Bearer API keys that carry one of ``allowed`` scopes (async: the check's
    database work runs on the loop's executor, as the page's socket does)."""

    def __init__(self, allowed: frozenset[str]) -> None:
        self.allowed = allowed
        super().__init__()

    async def authenticate(self, request: HttpRequest, token: str) -> Any:
        try:
            return await db_run(
                api_key_authenticate,
                key=token.strip(),
                allowed=self.allowed,
                ip=client_ip(request),
                path=request.path,
            )
        except ApiKeyRefused as refused:
            raise ApiError(refused.status, refused.message, code=refused.code) from None
