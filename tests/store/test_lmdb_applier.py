"""Publish first, LMDB behind (``liverank.store.lmdb_applier``): a store in ``publish`` mode serves an inbox delta
from the shared tier before LMDB holds it, writes it into LMDB in publish order with the generation it was published
as, retires its inbox entry only then, and stops rather than let LMDB and the tier disagree."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from liverank.store import EmbeddingStore, Inbox, SequenceGap, SlotConfig
from liverank.store.lmdb_applier import HOLD_ENV
from liverank.store.validation import prepare_delta
from tests.store.conftest import MAP_BYTES, make_delta

INT_SLOTS = [SlotConfig("item", 4), SlotConfig("author", 4)]  # every slot complete in the tier: publish first


@pytest.fixture
def hold(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """While this file exists, the store's LMDB thread writes nothing."""
    path = tmp_path / "hold"
    path.touch()
    monkeypatch.setenv(HOLD_ENV, str(path))
    return path


@pytest.fixture
def publisher(tmp_path: Path, hold: Path) -> Iterator[EmbeddingStore]:
    store = EmbeddingStore.open(
        tmp_path / "store", slots=INT_SLOTS, map_size_bytes=MAP_BYTES, tier="publish", shared_tier_dir=tmp_path / "tier"
    )
    yield store
    hold.unlink(missing_ok=True)
    store.close()


def _apply_inbox(store: EmbeddingStore, inbox: Inbox) -> list[str]:
    return [
        store.apply(
            entry.delta(), inbox_key=entry.key, payload=entry.payload, received_at_ms=entry.received_at_ms
        ).status
        for entry in inbox.pending(limit=100)
    ]


def test_an_inbox_delta_is_served_before_lmdb_holds_it_and_retired_once_it_does(
    publisher: EmbeddingStore, hold: Path
) -> None:
    inbox = Inbox(publisher.lmdb, max_depth=100)
    for seq in (1, 2, 3):
        inbox.enqueue(make_delta(seq, {"item": ([seq, 100], float(seq))}), received_at_ms=seq)
    assert _apply_inbox(publisher, inbox) == ["applied"] * 3
    assert publisher.publisher is not None
    assert publisher.applier is not None
    epoch = publisher.publisher.epoch
    assert (epoch.generation, epoch.applied_seq) == (3, {"trainer": 3})  # served
    assert publisher.applied_seqs() == {}  # LMDB: nothing yet
    assert (inbox.depth(), publisher.applier.lag) == (3, 3)  # the entries stay until LMDB holds their rows
    # Handed over again (the updater's next look at the inbox): the in-flight ones are known and left alone.
    assert all(publisher.applier.in_flight(entry.key) for entry in inbox.pending())

    hold.unlink()
    assert publisher.applier.wait_idle(60)
    with publisher.lmdb.read() as txn:
        assert publisher.lmdb.generation(txn) == 3
    assert publisher.applied_seqs() == {"trainer": 3}
    assert inbox.depth() == 0
    assert publisher.rows_checksum()["rows"] == 4  # ids 1, 2, 3 and 100


def test_a_duplicate_and_a_gap_are_judged_against_the_served_state(publisher: EmbeddingStore) -> None:
    inbox = Inbox(publisher.lmdb, max_depth=100)
    inbox.enqueue(make_delta(1, {"item": ([1], 1.0)}), received_at_ms=1)
    (entry,) = inbox.pending()
    assert publisher.apply(entry.delta(), inbox_key=entry.key, payload=entry.payload).status == "applied"
    # The same delta again (LMDB does not hold it yet): a duplicate, not a second application.
    again = publisher.apply(entry.delta(), inbox_key=entry.key, payload=entry.payload)
    assert (again.status, again.generation) == ("duplicate", 1)
    with pytest.raises(SequenceGap) as gap:
        publisher.apply(make_delta(3, {"item": ([3], 3.0)}), inbox_key=b"trainer\x00gap")
    assert gap.value.expected == 2


def test_the_lmdb_thread_stops_when_lmdb_would_give_a_delta_another_generation(
    publisher: EmbeddingStore, hold: Path
) -> None:
    inbox = Inbox(publisher.lmdb, max_depth=100)
    inbox.enqueue(make_delta(1, {"item": ([1], 1.0)}), received_at_ms=1)
    assert _apply_inbox(publisher, inbox) == ["applied"]  # published as generation 1, held from LMDB
    # Something writes LMDB behind the writer's back (the invariant this guards): LMDB's next generation is 2.
    other = make_delta(1, {"author": ([7], 7.0)}, producer="other")
    with publisher.lmdb.read() as txn:
        slots = publisher.lmdb.slot_table(txn)
    publisher.lmdb.apply(prepare_delta(other, slots, None), b"")
    assert publisher.applier is not None
    hold.unlink()
    deadline = time.monotonic() + 60
    while publisher.applier.alive:
        assert time.monotonic() < deadline, "the LMDB thread went on"
        time.sleep(0.01)
    assert publisher.applier.failure is not None
    assert "published as generation 1" in publisher.applier.failure
    with pytest.raises(RuntimeError, match="the LMDB applier stopped"):
        publisher.applier.wait_idle(1)
