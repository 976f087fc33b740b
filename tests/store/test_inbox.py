"""The durable inbox: ordered per producer, duplicates and gaps told apart, bounded, exactly-once hand-off."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import lmdb
import pytest

from liverank.store import EmbeddingStore, Inbox, InboxFull, SequenceGap, encode_delta
from liverank.store.lmdb_store import INBOX_DIR
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


def test_an_applied_entry_left_in_the_inbox_is_retired_as_a_duplicate(store: EmbeddingStore) -> None:
    """The rows' transaction commits before the inbox entry is removed: a writer killed between the two leaves an
    entry whose sequence is applied. A producer's retry of it is a duplicate, and the next apply only retires it."""
    inbox = Inbox(store.lmdb, max_depth=10)
    delta = make_delta(1, {"item": ([1], 1.0)})
    inbox.enqueue(delta, 0)
    (entry,) = inbox.pending()
    assert store.apply(entry.delta(), payload=entry.payload).status == "applied"  # the rows, and no removal
    assert inbox.enqueue(delta, 0).status == "duplicate"
    assert store.apply(entry.delta(), inbox_key=entry.key).status == "duplicate"
    assert inbox.depth() == 0
    assert store.applied_seq("trainer") == 1
    assert inbox.enqueue(make_delta(2, {"item": ([1], 2.0)}), 0).status == "queued"


def test_an_enqueue_does_not_wait_for_a_rows_transaction(store: EmbeddingStore) -> None:
    """The inbox has its own LMDB environment: a push is queued while the rows' write lock is held (by the writer's
    LMDB thread, in a server: 60-120 ms per D-10k delta at 10M rows)."""
    inbox = Inbox(store.lmdb, max_depth=10)
    holding, release = threading.Event(), threading.Event()

    def hold_rows_lock() -> None:
        with store.lmdb.env.begin(write=True):
            holding.set()
            release.wait(60)

    holder = threading.Thread(target=hold_rows_lock)
    holder.start()
    try:
        assert holding.wait(60)
        assert inbox.enqueue(make_delta(1, {"item": ([1], 1.0)}), 0).status == "queued"
        assert holder.is_alive()  # the rows' transaction was still open while the delta was queued
    finally:
        release.set()
        holder.join(60)
    assert inbox.depth() == 1


def test_entries_queued_by_an_older_store_move_to_the_inbox_environment(tmp_path: Path) -> None:
    """A store from before the inbox environment queued its deltas in the main environment's ``inbox`` database:
    opening it moves them (nothing acknowledged is lost), and they apply once."""
    path = tmp_path / "s"
    with EmbeddingStore.open(path, slots=SLOTS, map_size_bytes=MAP_BYTES):
        pass
    shutil.rmtree(path / INBOX_DIR)
    delta = make_delta(1, {"item": ([7], 7.0)})
    env = lmdb.open(str(path), map_size=MAP_BYTES, max_dbs=5)
    with env.begin(write=True) as txn:
        txn.put(
            b"trainer\x00" + (1).to_bytes(8, "big"),
            (55).to_bytes(8, "little") + encode_delta(delta),
            db=env.open_db(b"inbox", txn=txn),
        )
    env.close()
    with EmbeddingStore.open(path, map_size_bytes=MAP_BYTES) as store:
        inbox = Inbox(store.lmdb, 10)
        (entry,) = inbox.pending()
        assert (entry.producer, entry.seq, entry.received_at_ms) == ("trainer", 1, 55)
        assert inbox.enqueue(delta, 0).status == "duplicate"
        assert store.apply(entry.delta(), inbox_key=entry.key).status == "applied"
        assert inbox.depth() == 0
    env = lmdb.open(str(path), map_size=MAP_BYTES, max_dbs=5)
    with env.begin() as txn:
        assert txn.stat(env.open_db(b"inbox", txn=txn))["entries"] == 0  # moved, not copied
    env.close()
