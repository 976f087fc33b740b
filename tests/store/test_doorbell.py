"""The inbox doorbell: a queued entry wakes the writer; a missing or busy bell never loses an entry."""

from __future__ import annotations

import threading
import uuid
from pathlib import Path

from liverank.store import EmbeddingStore, Inbox
from liverank.store.doorbell import Doorbell, doorbell_address, ring
from tests.store.conftest import make_delta


def _address() -> bytes:
    return b"\0liverank-test-" + uuid.uuid4().hex.encode()


def test_a_ring_wakes_a_waiting_writer_thread() -> None:
    bell = Doorbell.bind(_address())
    assert bell is not None
    try:
        woke: list[bool] = []
        waiting = threading.Thread(target=lambda: woke.append(bell.wait(60.0)))
        waiting.start()
        ring(_address())  # another bell's address: nobody listens there, and nothing is raised
        ring(bell_address := bell_address_of(bell))
        waiting.join(60.0)
        assert woke == [True]
        assert bell.wait(0.0) is False  # the ring was consumed
        for _ in range(5):
            ring(bell_address)
        assert bell.wait(0.0) is True  # several waiting rings wake once...
        assert bell.wait(0.0) is False  # ...and are all consumed
    finally:
        bell.close()


def bell_address_of(bell: Doorbell) -> bytes:
    address = bell._sock.getsockname()
    assert isinstance(address, bytes)
    return address


def test_a_second_writer_gets_no_bell_and_polls_instead() -> None:
    address = _address()
    first = Doorbell.bind(address)
    assert first is not None
    try:
        assert Doorbell.bind(address) is None
    finally:
        first.close()
    again = Doorbell.bind(address)  # released with its holder
    assert again is not None
    again.close()


def test_the_bell_is_named_after_the_stores_real_path(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    assert doorbell_address(tmp_path / "link") == doorbell_address(tmp_path / "real")
    assert doorbell_address(tmp_path / "real") != doorbell_address(tmp_path / "other")


def test_a_queued_entry_rings_the_stores_bell_and_a_duplicate_does_not(store: EmbeddingStore) -> None:
    inbox = Inbox(store.lmdb, max_depth=10)
    bell = Doorbell.bind(doorbell_address(store.lmdb.path))
    assert bell is not None
    try:
        assert inbox.enqueue(make_delta(1, {"item": ([1], 1.0)}), 0).status == "queued"
        assert bell.wait(60.0) is True
        assert inbox.enqueue(make_delta(1, {"item": ([1], 1.0)}), 0).status == "duplicate"
        assert bell.wait(0.0) is False
    finally:
        bell.close()
