"""Live pushes to the browser for accounts: budget warnings.

The HTML is the ``budget-warning`` partial of ``accounts/usage.html``, wrapped for
``hx-swap-oob="afterbegin:#notifications"``: the page must have an element with
id ``notifications`` (base.html) for the warning to appear. Sent to the user's
group through ``project.pushes.send_event_on_commit``, the one push path.
"""

from __future__ import annotations

from django.template.loader import render_to_string

from accounts.models import BudgetWarning
from project.pushes import send_event_on_commit, user_group


def budget_warning_push(*, warning: BudgetWarning) -> None:
    """Push ``warning`` to its user's pages once the current transaction commits
    (at once outside a transaction); rendered from the row in hand, no query."""

    def build() -> list[tuple[str, str]]:
        html = render_to_string(
            "accounts/usage.html#budget-warning", {"warning": warning, "oob": True}
        )
        return [(user_group(warning.user_id), html)]

    send_event_on_commit(build, lane=f"budget-warning.{warning.pk}", in_hand=True)
