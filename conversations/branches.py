"""A conversation as a tree of exchanges, and the branch of it shown and continued.

Each run is one exchange (a user message and the answer to it); ``Run.parent`` is
the run whose answer it follows (``None``: the conversation's first exchange).
Runs with one parent are alternatives at one place of the conversation:

- answers regenerated for the same user message (the same ``user_message``), which
  the reply's "< 2/3 >" switches between;
- user messages edited and sent again (another ``user_message`` with the same
  parent), which the message's "< 1/2 >" switches between.

``Conversation.current_run`` is the last run of the branch shown: the page draws
the path from the first exchange to it, the next message continues it, and the
model reads that path's messages (``engine.history_with_ids``). Switching to an
alternative shows its newest branch (its subtree's newest run).

User messages that no run answers (rows made outside the services) are drawn and
read where their ids put them, on every branch; runs made outside the services,
with no parent, continue the line (``conversation_tree``).

Reads only (one query for a conversation's tree); the writes are
``services.run_regenerate``, ``services.message_edit`` and ``services.branch_show``.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from conversations.models import Conversation, Run


@dataclass(frozen=True)
class Switch:
    """Where an exchange stands among its alternatives: ``index`` (from 1) of
    ``count``, and the run to show for the one before and after (``None`` at an end)."""

    index: int
    count: int
    previous: int | None
    next: int | None


@dataclass
class Tree:
    """A conversation's runs: ``parent[run]``, ``message[run]`` (the user message it
    answers), ``children[parent]`` (``None``: the first exchanges), in id order."""

    parent: dict[int, int | None] = field(default_factory=dict)
    message: dict[int, int] = field(default_factory=dict)
    children: dict[int | None, list[int]] = field(default_factory=lambda: defaultdict(list))
    #: Parts of a compare run (``Run.orchestrator``): part → its compare run.
    parts: dict[int, int] = field(default_factory=dict)

    def path(self, leaf: int | None) -> list[int]:
        """The runs from the first exchange to ``leaf``, in order (``[]`` for ``None``)."""
        out: list[int] = []
        seen: set[int] = set()
        while leaf is not None and leaf in self.parent and leaf not in seen:
            seen.add(leaf)
            out.append(leaf)
            leaf = self.parent[leaf]
        return out[::-1]

    def newest_below(self, run: int) -> int:
        """The newest run of ``run``'s subtree (itself included): the end of the
        branch to show when switching to ``run``."""
        newest, stack = run, [run]
        while stack:
            node = stack.pop()
            newest = max(newest, node)
            stack.extend(self.children.get(node, []))
        return newest

    def newest(self) -> int | None:
        return max(self.parent, default=None)

    def answer_switch(self, run: int) -> Switch:
        """``run`` among the answers to its user message at its place (regenerated);
        a compare's parts are not alternatives of their own: a part stands where its
        compare run does."""
        run = self.parts.get(run, run)
        same = [
            other
            for other in self.children[self.parent.get(run)]
            if self.message[other] == self.message[run] and other not in self.parts
        ]
        return self._switch(run, same, [self.newest_below(other) for other in same])

    def message_switch(self, run: int) -> Switch:
        """``run``'s user message among the messages sent at its place (edits): each
        alternative is shown by its newest branch."""
        by_message: dict[int, list[int]] = defaultdict(list)
        for other in self.children[self.parent.get(run)]:
            by_message[self.message[other]].append(other)
        messages = sorted(by_message)
        targets = [max(self.newest_below(r) for r in by_message[m]) for m in messages]
        here = messages.index(self.message[run])
        return self._switch(messages[here], messages, targets)

    @staticmethod
    def _switch(item: int, items: list[int], targets: list[int]) -> Switch:
        index = items.index(item)
        return Switch(
            index=index + 1,
            count=len(items),
            previous=targets[index - 1] if index > 0 else None,
            next=targets[index + 1] if index + 1 < len(items) else None,
        )


def conversation_tree(*, conversation_id: int) -> Tree:
    """The conversation's runs as a ``Tree``; one query.

    A run with no parent that is not marked a first exchange (``metadata["root"]``,
    which the services set) follows the newest run answering an earlier user
    message, as every exchange did before conversations branched: rows made
    otherwise (older ones, imports, tests), or whose parent was deleted, read as
    one line.
    """
    tree = Tree()
    rows = (
        # A chain's parts and an answer's sub-runs are steps inside its run's
        # exchange, never places the conversation goes on from; a compare's parts
        # are, each one (``parts``).
        Run.objects.filter(conversation_id=conversation_id)
        .exclude(orchestrator__kind__in=(Run.Kind.CHAIN, Run.Kind.ANSWER))
        .order_by("user_message_id", "id")
        .values_list("id", "parent_id", "user_message_id", "metadata__root", "orchestrator_id")
    )
    newest_before: int | None = None  # the newest run of the earlier user messages
    newest_here: int | None = None
    message: int | None = None
    explicit: dict[int, int | None] = {}
    for run_id, parent_id, message_id, root, orchestrator_id in rows:
        if orchestrator_id is not None:
            tree.parts[run_id] = orchestrator_id
        if message_id != message:
            if newest_here is not None:
                newest_before = max(newest_here, newest_before or 0)
            message, newest_here = message_id, None
        tree.message[run_id] = message_id
        explicit[run_id] = parent_id
        tree.parent[run_id] = parent_id if parent_id is not None or root else newest_before
        newest_here = max(run_id, newest_here or 0)
    for run, parent in explicit.items():
        if parent is not None and parent not in tree.parent:
            tree.parent[run] = None  # its parent is gone (deleted): a first exchange
    for run in sorted(tree.parent):
        tree.children[tree.parent[run]].append(run)
    return tree


def shown_leaf(conversation: Conversation, tree: Tree) -> int | None:
    """The last run of the branch shown: ``current_run``, or the newest run when that
    is unset or gone."""
    current = conversation.current_run_id
    return current if current in tree.parent else tree.newest()
