"""Signals tools sends to the apps above it (connected in their ``AppConfig.ready``).

Tools may not import those apps (DESIGN.md, "Layers"); they register here.
"""

from __future__ import annotations

from django.dispatch import Signal

#: Asked while a tool call runs, from a database thread: was its run told to stop?
#: Sent with ``sender=ToolInvocation`` and ``run_id=`` (int); a receiver returns
#: ``True`` when the run was asked to stop or is gone (``conversations`` answers
#: for its runs). A call stops when any receiver says so.
run_cancel_query = Signal()
