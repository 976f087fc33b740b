"""The durable inbox: ordered per producer, duplicates and gaps told apart, bounded, exactly-once hand-off."""

from __future__ import annotations

from pathlib import Path

import pytest

from liverank.store import EmbeddingStore, Inbox, InboxFull, SequenceGap, encode_delta
from tests.store.conftest import MAP_BYTES, SLOTS, make_delta


def test_enqueue_checks_sequences_against_applied_and_queued(store: EmbeddingStore) -> None:
    inbox = Inbox(store.lmdb, max_depth=10)
    store.apply(make_delta(1, {"item": ([1], 1.0)}))
    assert inbox.enqueue(make_delta(1, {"item": ([1], 1.0)}), 0).status == "duplicate"
    assert inbox.enqueue(make_delta(2, {"item": ([1], 2.0)}), 0).status == "queued"
    assert inbox.enqueue(make_delta(2, {"item": ([1], 2.0)}), 0).status == "duplicate"
    with pytest.raises(SequenceGap) as info:
        inbox.enqueue(make_delta(4, {"item": ([1], 4.0)}), 0)
    assert info.value.expected == 3
    assert inbox.enqueue(make_delta(3, {"item": ([1], 3.0)}), 0).status == "queued"
    assert inbox.enqueue(make_delta(1, {"item": ([1], 1.0)}, producer="b"), 0).status == "queued"
    assert inbox.depth() == 3


def test_pending_is_in_sequence_order_and_apply_removes_the_entry(store: EmbeddingStore) -> None:
    inbox = Inbox(store.lmdb, max_depth=300)
    for seq in range(1, 260):  # past 255: big-endian keys keep numeric order
        inbox.enqueue(make_delta(seq, {"item": ([seq], float(seq))}), received_at_ms=seq)
    entries = inbox.pending(limit=1000)
    assert [e.seq for e in entries] == list(range(1, 260))
    for entry in entries:
        result = store.apply(entry.delta(), inbox_key=entry.key, payload=entry.payload)
        assert result.status == "applied"
    assert inbox.depth() == 0
    assert store.applied_seq("trainer") == 259
    assert store.lookup("item", [259]).vectors[0, 0] == 259.0


def test_the_inbox_is_bounded(store: EmbeddingStore) -> None:
    inbox = Inbox(store.lmdb, max_depth=2)
    inbox.enqueue(make_delta(1, {"item": ([1], 1.0)}), 0)
    inbox.enqueue(make_delta(2, {"item": ([1], 1.0)}), 0)
    with pytest.raises(InboxFull):
        inbox.enqueue(make_delta(3, {"item": ([1], 1.0)}), 0)
    assert inbox.depth() == 2


def test_queued_deltas_survive_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "s"
    with EmbeddingStore.open(path, slots=SLOTS, map_size_bytes=MAP_BYTES) as store:
        delta = make_delta(1, {"item": ([1], 1.0)})
        Inbox(store.lmdb, 10).enqueue(delta, 123, payload=encode_delta(delta))
    with EmbeddingStore.open(path, map_size_bytes=MAP_BYTES) as store:
        (entry,) = Inbox(store.lmdb, 10).pending()
        assert (entry.producer, entry.seq, entry.received_at_ms) == ("trainer", 1, 123)
        assert store.apply(entry.delta(), inbox_key=entry.key).status == "applied"
        assert Inbox(store.lmdb, 10).depth() == 0
