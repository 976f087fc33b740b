"""The log position (replicated mode) moves with the rows in one transaction; snapshots copy one read snapshot
and tag it with what it holds; the rows digest tells equal stores from different ones."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from liverank.store import EmbeddingStore
from tests.store.conftest import MAP_BYTES, SLOTS, make_delta


def test_the_log_position_is_recorded_with_the_delta_duplicate_or_not(store: EmbeddingStore) -> None:
    assert store.log_position() == 0
    store.apply(make_delta(1, {"item": ([1], 1.0)}), log_position=3)
    assert store.log_position() == 3
    duplicate = store.apply(make_delta(1, {"item": ([1], 1.0)}), log_position=4)
    assert duplicate.status == "duplicate"
    assert store.log_position() == 4
    with pytest.raises(ValueError, match="not after"):
        store.apply(make_delta(2, {"item": ([2], 2.0)}), log_position=4)
    assert store.applied_seq("trainer") == 1  # refused whole: the rows did not move either
    store.lmdb.advance_log_position(5, {"note": {"k": 1}})
    assert store.log_position() == 5
    assert store.lmdb.get_app_record("note") == {"k": 1}


def test_rows_digest_tells_stores_apart(tmp_path: Path) -> None:
    digests = []
    for name, value in (("a", 1.0), ("b", 1.0), ("c", 2.0)):
        with EmbeddingStore.open(tmp_path / name, slots=SLOTS, map_size_bytes=MAP_BYTES) as s:
            s.apply(make_delta(1, {"item": ([1, 2], value)}))
            digests.append(s.rows_checksum())
    assert digests[0] == digests[1]
    assert digests[0]["rows_digest"] != digests[2]["rows_digest"]
    assert digests[0]["rows"] == 2


def test_a_snapshot_taken_while_deltas_apply_holds_exactly_its_tags(store: EmbeddingStore, tmp_path: Path) -> None:
    for seq in range(1, 21):
        store.apply(make_delta(seq, {"item": ([seq], float(seq))}), log_position=seq)
    done = threading.Event()

    def keep_writing() -> None:
        for seq in range(21, 400):
            store.apply(make_delta(seq, {"item": ([seq], float(seq))}), log_position=seq)
        done.set()

    writer = threading.Thread(target=keep_writing)
    writer.start()
    tags = store.lmdb.snapshot_to(tmp_path / "snap")
    writer.join()
    assert done.is_set()
    with EmbeddingStore.open(tmp_path / "snap", map_size_bytes=MAP_BYTES, ram_tier=False) as copy:
        assert copy.applied_seqs() == tags["applied_seq"]
        assert copy.log_position() == tags["log_position"] == tags["applied_seq"]["trainer"]
        assert copy.rows_checksum()["rows"] == tags["log_position"]
