"""API keys: made, used and revoked (``accounts.models.ApiKey``).

A key is ``tg_`` and 43 characters of ``secrets.token_urlsafe(32)`` (256 random
bits). Only its first :attr:`ApiKey.PREFIX_CHARS` characters (to find and name
it) and its SHA-256 are stored; a request's key is hashed and compared with
``hmac.compare_digest``. Creating and revoking a key, and every refused use of
an existing key (revoked, expired, wrong secret, inactive user, a scope it
lacks), are audited (``api_key.created``, ``api_key.revoked``,
``api_key.denied``). A key that matches no row is refused without an audit
event (logged): strangers' guesses would otherwise fill the trail.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from collections.abc import Iterable
from datetime import datetime, timedelta

from django.db import transaction
from django.utils import timezone

from accounts.models import ApiKey, User
from audit.services import audit_record

logger = logging.getLogger(__name__)

KEY_START = "tg_"
#: Length of a whole key: ``tg_`` and ``token_urlsafe(32)``.
KEY_CHARS = len(KEY_START) + 43
#: The most keys (revoked ones included) a user may have.
MAX_KEYS_PER_USER = 100
#: ``last_used_at`` is written at most this often per key (a write per request
#: would be a write per request).
LAST_USED_EVERY = timedelta(minutes=1)


class ApiKeyError(Exception):
    """A key cannot be made or revoked as asked; ``str()`` is a message for people."""


class ApiKeyNotFound(ApiKeyError):
    """No such key, or not the user's (answer 404)."""


class ApiKeyRefused(Exception):
    """A request's key is refused. ``status``: 401 (no valid key) or 403 (a valid key
    without the scope); ``code``: a short name (``invalid_api_key``, ``key_revoked``,
    ``key_expired``, ``insufficient_scope``); ``message``: for people."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def key_hash(key: str) -> str:
    """The SHA-256 (hex) of a whole key, as stored."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def _scopes_clean(scopes: Iterable[str]) -> list[str]:
    chosen = {str(scope) for scope in scopes}
    unknown = chosen - set(ApiKey.Scope.values)
    if unknown:
        raise ApiKeyError(f"Unknown scope {sorted(unknown)[0][:40]!r}.")
    if not chosen:
        raise ApiKeyError("Choose at least one scope.")
    return [scope for scope in ApiKey.Scope.values if scope in chosen]


def api_key_create(
    *,
    user: User,
    name: str,
    scopes: Iterable[str],
    expires_at: datetime | None = None,
    ip: str | None = None,
) -> tuple[ApiKey, str]:
    """Make a key for ``user``; returns the row and the key itself (show it once,
    it is not stored).

    ``name``: 1 to 100 characters (whitespace collapsed); ``scopes``: values of
    ``ApiKey.Scope``, at least one; ``expires_at``: an aware time in the future,
    or ``None`` for never. Audited as ``api_key.created``. Raises
    :class:`ApiKeyError` for a bad name, scope or expiry, or past
    ``MAX_KEYS_PER_USER`` keys.
    """
    name = " ".join((name or "").split())
    if not name:
        raise ApiKeyError("Give the key a name.")
    if len(name) > 100:
        raise ApiKeyError("The name is too long (100 characters at most).")
    chosen = _scopes_clean(scopes)
    if expires_at is not None and expires_at <= timezone.now():
        raise ApiKeyError("The expiry must be in the future.")
    with transaction.atomic():
        # The user's row first: two creations at once count each other.
        User.objects.select_for_update(no_key=True).filter(pk=user.pk).first()
        if ApiKey.objects.filter(user=user).count() >= MAX_KEYS_PER_USER:
            raise ApiKeyError(f"You have {MAX_KEYS_PER_USER} keys; delete or revoke some first.")
        while True:
            key = KEY_START + secrets.token_urlsafe(32)
            prefix = key[: ApiKey.PREFIX_CHARS]
            if not ApiKey.objects.filter(prefix=prefix).exists():
                break
        row = ApiKey.objects.create(
            user=user,
            name=name,
            prefix=prefix,
            key_hash=key_hash(key),
            scopes=chosen,
            expires_at=expires_at,
        )
        audit_record(
            action="api_key.created",
            actor=user,
            target_type="api_key",
            target_id=row.pk,
            data={"name": name, "prefix": prefix, "scopes": chosen, "expires_at": expires_at},
            ip=ip,
        )
    return row, key


def api_key_revoke(
    *, actor: User, key_id: int, as_admin: bool = False, ip: str | None = None
) -> tuple[ApiKey, bool]:
    """Revoke key ``key_id``: ``actor``'s own, or anyone's when ``as_admin`` (the
    admin's action; the caller checks the permission). Returns the key and
    whether it was revoked now (``False``: it already was; nothing is written).
    Audited as ``api_key.revoked``. Raises :class:`ApiKeyNotFound`.
    """
    with transaction.atomic():
        rows = ApiKey.objects.select_for_update(no_key=True).filter(pk=key_id)
        if not as_admin:
            rows = rows.filter(user=actor)
        row = rows.first()
        if row is None:
            raise ApiKeyNotFound("No such key.")
        if row.revoked_at is not None:
            return row, False
        row.revoked_at = timezone.now()
        row.revoked_by = actor
        row.save(update_fields=["revoked_at", "revoked_by"])
        audit_record(
            action="api_key.revoked",
            actor=actor,
            target_type="api_key",
            target_id=row.pk,
            data={"name": row.name, "prefix": row.prefix, "owner_id": row.user_id},
            ip=ip,
        )
    return row, True


def _denied(
    row: ApiKey, *, reason: str, ip: str | None, path: str, refused: ApiKeyRefused
) -> ApiKeyRefused:
    """Audit a refused use of ``row`` (``api_key.denied``); returns ``refused`` to raise."""
    audit_record(
        action="api_key.denied",
        actor=row.user_id,
        target_type="api_key",
        target_id=row.pk,
        data={"prefix": row.prefix, "reason": reason, "path": path[:200]},
        ip=ip,
    )
    return refused


def api_key_authenticate(
    *, key: str, allowed: Iterable[str], ip: str | None = None, path: str = ""
) -> ApiKey:
    """The key ``key`` (its ``user`` loaded) if it may be used for a request that
    any scope in ``allowed`` permits.

    Raises :class:`ApiKeyRefused`: 401 ``invalid_api_key`` (no such key, a wrong
    secret, the user deactivated), 401 ``key_revoked``, 401 ``key_expired``, 403
    ``insufficient_scope``. Every refusal of an existing key is audited as
    ``api_key.denied`` (``path``: the request's, for the record).
    """
    invalid = ApiKeyRefused(401, "invalid_api_key", "Incorrect API key provided.")
    if len(key) != KEY_CHARS or not key.startswith(KEY_START):
        logger.warning("API key refused: not a Tollgate key (%d characters)", len(key))
        raise invalid
    row = ApiKey.objects.select_related("user").filter(prefix=key[: ApiKey.PREFIX_CHARS]).first()
    if row is None:
        logger.warning("API key refused: no key %s…", key[: ApiKey.PREFIX_CHARS])
        raise invalid
    now = timezone.now()
    if not hmac.compare_digest(key_hash(key), row.key_hash):
        raise _denied(row, reason="wrong_secret", ip=ip, path=path, refused=invalid)
    if row.revoked_at is not None:
        refused = ApiKeyRefused(401, "key_revoked", "This API key has been revoked.")
        raise _denied(row, reason="revoked", ip=ip, path=path, refused=refused)
    if row.expires_at is not None and row.expires_at <= now:
        refused = ApiKeyRefused(401, "key_expired", "This API key has expired.")
        raise _denied(row, reason="expired", ip=ip, path=path, refused=refused)
    if not row.user.is_active:
        raise _denied(row, reason="user_inactive", ip=ip, path=path, refused=invalid)
    wanted = set(allowed)
    if not wanted & set(row.scopes):
        names = " or ".join(f"`{scope}`" for scope in sorted(wanted))
        refused = ApiKeyRefused(
            403, "insufficient_scope", f"This API key lacks the scope this needs: {names}."
        )
        raise _denied(row, reason="scope", ip=ip, path=path, refused=refused)
    if row.last_used_at is None or row.last_used_at <= now - LAST_USED_EVERY:
        ApiKey.objects.filter(pk=row.pk).update(last_used_at=now)
        row.last_used_at = now
    return row
