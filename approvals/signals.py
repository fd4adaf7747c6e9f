"""Signals approvals sends to the apps above it (connected in their ``AppConfig.ready``).

Approvals may not import those apps (DESIGN.md, "Layers"); they register here.
Both are sent inside the transaction of a decision or an expiry, with
``sender=ApprovalRequest`` and ``approval=`` the request; a receiver's exception
rolls the decision back.
"""

from __future__ import annotations

from django.dispatch import Signal

#: Before the request is locked: receivers lock the rows that come first in the lock
#: order (``conversations.runs``: the run, then its tool invocation). ``approval`` is
#: the request as read without a lock.
approval_deciding = Signal()

#: After the request left ``pending`` (approved, denied or expired) and was saved,
#: still locked: receivers apply the outcome (``conversations.toolphase``).
approval_decided = Signal()
