"""The arguments hash an approval is bound to.

Built on the audit trail's canonical JSON (``audit.canonical``), so the hash
an approval card carries is stable across processes and across a round trip
through PostgreSQL ``jsonb``, exactly as the audit chain's hashes are.
"""

from __future__ import annotations

from typing import Any

from audit.canonical import canonical_json, sha256_hex


def arguments_hash(arguments: Any) -> str:
    """SHA-256 (hex) of the canonical JSON of tool-call arguments.

    An approval is bound to this hash: a decision must quote it, so a decision
    made on a card showing other arguments is refused.
    """
    return sha256_hex(canonical_json(arguments))
