"""Canonical JSON and the SHA-256 built on it.

One function decides how a JSON value becomes bytes, so the hash chain of the
audit trail (and the arguments hash approvals builds on the same helpers) is
stable across processes and across a round trip through PostgreSQL ``jsonb``
(which reorders keys and may print an integral float such as ``1e100`` as an
integer).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from django.core.serializers.json import DjangoJSONEncoder


def _normalise(value: Any) -> Any:
    if isinstance(value, bool) or value is None or isinstance(value, int | str):
        return value
    if isinstance(value, float):
        # jsonb keeps 1.0 as 1.0 but prints 1e100 as an integer; mapping every
        # integral float to an int gives the same bytes on both sides.
        return int(value) if value.is_integer() else value
    if isinstance(value, dict):
        return {str(k): _normalise(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_normalise(v) for v in value]
    raise TypeError(f"{type(value).__name__} is not a JSON value")


def json_safe(value: Any) -> Any:
    """Return ``value`` as plain JSON types (dates, UUIDs, Decimals become strings).

    Raises ``ValueError`` for NaN or infinity, which JSON (and ``jsonb``) cannot hold.
    """
    return json.loads(json.dumps(value, cls=DjangoJSONEncoder, allow_nan=False))


def canonical_json(value: Any) -> str:
    """Serialise a JSON value canonically: sorted keys, no spaces, UTF-8 text.

    Raises ``TypeError`` for values that are not plain JSON (call ``json_safe`` first).
    """
    return json.dumps(
        _normalise(value),
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=False,
    )


def sha256_hex(text: str) -> str:
    """SHA-256 of UTF-8 ``text`` as 64 lowercase hex digits."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
