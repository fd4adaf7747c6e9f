"""Live pushes to the browser for accounts: budget warnings.

Every push is a channel-layer ``{"type": "html.push", "html": ...}`` message to
the ``user.<id>`` group, sent after the transaction commits. The HTML is the
``budget-warning`` partial of ``accounts/usage.html``, wrapped for
``hx-swap-oob="afterbegin:#notifications"``: the page must have an element
with id ``notifications`` (base.html) for the warning to appear.
"""

from __future__ import annotations

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import transaction
from django.template.loader import render_to_string

from accounts.models import BudgetWarning


def _send(group: str, html: str) -> None:
    layer = get_channel_layer()
    if layer is not None:
        async_to_sync(layer.group_send)(group, {"type": "html.push", "html": html})


def budget_warning_push(*, warning: BudgetWarning) -> None:
    """Push ``warning`` to its user's pages once the current transaction commits.

    Renders now (inside the caller's transaction), sends on commit; outside a
    transaction it sends at once.
    """
    html = render_to_string("accounts/usage.html#budget-warning", {"warning": warning, "oob": True})
    group = f"user.{warning.user_id}"
    transaction.on_commit(lambda: _send(group, html))
