"""Signals prompts sends to the apps above it (connected in their ``AppConfig.ready``).

Prompts may not import those apps (docs/architecture.md); they answer here.
"""

from __future__ import annotations

from django.dispatch import Signal

#: Asked when a prompt version names a model: the names of the models users may
#: pick (enabled ``ModelConfig`` rows; ``conversations`` answers). Sent with
#: ``sender=PromptVersion``; each receiver returns a list of names.
model_names_query = Signal()
