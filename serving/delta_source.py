"""The writer's input side: where the deltas it applies come from.

Two sources: the embedded LMDB inbox (one server alone; ``liverank.store.Inbox``) and, in replicated mode, the shared
JetStream log (``liverank.serving.replication.consumer.LogSource``). The updater applies what ``pending`` returns,
each delta in one write transaction that also retires it from its source (the inbox entry is deleted, or the log
position recorded), so either way a delta is applied exactly once across crashes and restarts.
"""

from __future__ import annotations

from typing import Any, Protocol

from liverank.store import InboxEntry


class DeltaSource(Protocol):
    # True when records must apply strictly in the given order across producers (a log with one position): a
    # record that cannot apply yet holds back every later one, not only its own producer's.
    in_order: bool

    def pending(self, limit: int = 64) -> list[InboxEntry]:
        """The oldest deltas not yet applied, in the order to apply them."""
        ...

    def depth(self) -> int:
        """How many deltas wait (for the log: records behind the stream's end)."""
        ...

    def discard(self, entry: InboxEntry) -> None:
        """Retire an entry that can never apply (the updater quarantined it), so the ones after it can go on."""
        ...

    def status(self) -> dict[str, Any]:
        """What ``/admin/status`` shows of the source (plain JSON values)."""
        ...
