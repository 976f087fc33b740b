"""The durable truth: one LMDB environment holding rows, per-producer sequences and slot configs, and beside it (in
the store directory's ``inbox/``) a second, small one holding the durable delta inbox.

Why the inbox has an environment of its own: LMDB has one write lock per environment. A pushed delta's inbox write
took that lock behind the writer's row transactions, which at 10M rows take 60-120 ms for a D-10k delta (longer on
a loaded machine), so a push waited for the previous delta's rows although it needs none of them. With its own
environment an enqueue waits only for other inbox writes. Exactly-once does not need the entry's removal in the rows'
transaction: that transaction records the producer's applied sequence, and an entry whose sequence is already applied
(the writer died between the two commits) is retired as a duplicate when it is next read (``apply``), and reported as
one to a producer that pushes it again (``Inbox.enqueue`` reads the applied sequence under the inbox's write lock).

LMDB rules this module keeps (py-lmdb's list):
- one environment per path per process (a second open of the same path raises ``StoreAlreadyOpen``);
- handles do not survive ``fork``: a child sees the store as closed and must open its own;
- values are copied out (py-lmdb returns ``bytes`` unless ``buffers=True``, which we never use) before a
  transaction ends;
- the map is sized up front (resizing invalidates readers); "map full" becomes ``StoreFull``, and a reserve of
  free pages is kept so that deletes keep working when inserts are refused;
- readers never wait for the writer (MVCC), and a delta's rows, its sequence and the store generation commit in
  one write transaction.
"""

from __future__ import annotations

import logging
import os
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import lmdb
import orjson

from liverank.store.errors import NotAStore, SequenceGap, SlotConflict, StoreAlreadyOpen, StoreClosed, StoreFull
from liverank.store.slots import SlotConfig
from liverank.store.validation import PreparedDelta

log = logging.getLogger(__name__)

Durability = Literal["process", "power"]
Txn = Any  # lmdb.Transaction (py-lmdb's stubs are skipped, see pyproject.toml)
STORE_FORMAT = b"liverank-store/1"
_U64 = struct.Struct("<Q")
_GEN = struct.Struct(">Q")
_LOG_KEY = struct.Struct(">QQ")
_TIME = struct.Struct("<q")
_DB_NAMES = (b"rows", b"meta", b"inbox", b"log")  # "inbox": where stores before the inbox environment queued
INBOX_DIR = "inbox"  # the inbox's own environment, inside the store directory
INBOX_MIN_MAP_BYTES = 4 * 1024**3
_META_FORMAT = b"format"
_META_SLOTS = b"slots"
_META_GENERATION = b"generation"
_META_SCHEMA = b"schema_hash"
_META_LOG_BYTES = b"changelog_bytes"
# Replicated mode: the position (stream sequence) of the last log record this store has applied or skipped. It is
# written in the same transaction as the rows a record brings, so a restart resumes exactly after it.
_META_LOG_POSITION = b"log_position"
_SEQ_PREFIX = b"seq/"
_ROWS_PREFIX = b"rows/"
_APP_PREFIX = b"app/"
DEFAULT_MAP_SIZE_BYTES = 64 * 1024**3
MIN_RESERVE_BYTES = 8 * 1024**2

_open_paths: set[str] = set()
_open_lock = threading.Lock()
_all_stores: list[LmdbStore] = []


def _forget_after_fork() -> None:
    # LMDB's docs: "do not use LMDB handles across fork". The child gets a clean slate: its copies of the parent's
    # environments are closed (py-lmdb keeps its own "already open" registry, which would refuse a fresh open of the
    # same path). Closing in the child only releases the child's reader slots (LMDB matches them by getpid()), and
    # fcntl locks are not inherited, so the parent's environment is untouched.
    _open_paths.clear()
    for store in _all_stores:
        store._forked = True
        try:
            store.inbox_env.close()
            store.env.close()
        except Exception:  # best effort: the child must be able to open its own environment
            log.debug("closing an inherited LMDB environment after fork failed", exc_info=True)
    _all_stores.clear()


os.register_at_fork(after_in_child=_forget_after_fork)


@dataclass(frozen=True)
class ApplyResult:
    status: Literal["applied", "duplicate"]
    producer: str
    seq: int
    generation: int
    rows_written: int = 0
    rows_deleted: int = 0


def _u64(raw: bytes | None) -> int:
    return 0 if raw is None else int(_U64.unpack(raw)[0])


class LmdbStore:
    """The LMDB environment and its meta records. ``EmbeddingStore`` is the public face over it."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        map_size_bytes: int = DEFAULT_MAP_SIZE_BYTES,
        durability: Durability = "process",
        reserve_bytes: int | None = None,
        readonly: bool = False,
        changelog_generations: int = 256,
    ) -> None:
        self.path = Path(path)
        self.durability = durability
        self.changelog_generations = changelog_generations
        # Followers further behind than the changelog rebuild their RAM tier; the cap keeps it a small share of the map.
        self.changelog_max_bytes = min(256 * 1024**2, map_size_bytes // 8)
        self.map_size_bytes = map_size_bytes
        self.reserve_bytes = (
            reserve_bytes
            if reserve_bytes is not None
            # Deleting rows copies B-tree pages (copy-on-write), so a large tombstone delta needs a good share of the
            # map free; small maps (a few MiB, tests) keep half of themselves instead of more than all of it.
            else min(max(MIN_RESERVE_BYTES, map_size_bytes // 50), map_size_bytes // 2)
        )
        self._forked = False
        self._closed = False
        self._check_directory()
        key = str(self.path.resolve())
        with _open_lock:
            if key in _open_paths:
                raise StoreAlreadyOpen(f"{self.path} is already open in this process (LMDB allows one environment)")
            _open_paths.add(key)
        self._key = key
        try:
            self.env = self._open_env(readonly)
            self._refuse_foreign_environment()
            try:
                self.rows_db = self.env.open_db(b"rows", create=not readonly)
                self.meta_db = self.env.open_db(b"meta", create=not readonly)
                self._legacy_inbox_db = self.env.open_db(b"inbox", create=not readonly)
                self.log_db = self.env.open_db(b"log", create=not readonly)
            except lmdb.Error as exc:
                raise NotAStore(f"{self.path}: an LMDB environment of another application ({exc})") from exc
            self._init_meta(readonly)
            self.inbox_env = self._open_inbox_env(readonly)
            self.inbox_db = self.inbox_env.open_db(b"inbox", create=not readonly)
            if not readonly:
                self._move_legacy_inbox()
        except BaseException:
            with _open_lock:
                _open_paths.discard(key)
            for name in ("inbox_env", "env"):
                if hasattr(self, name):
                    getattr(self, name).close()
            raise
        _all_stores.append(self)

    # --- opening ------------------------------------------------------------------------------------------------

    def _check_directory(self) -> None:
        if self.path.exists() and not self.path.is_dir():
            raise NotAStore(f"{self.path} is a file, not a store directory")
        if self.path.is_dir():
            entries = {p.name for p in self.path.iterdir()}
            if entries and "data.mdb" not in entries:
                raise NotAStore(
                    f"{self.path} is not empty and holds no LMDB data file (data.mdb): not a liverank store"
                )
        else:
            self.path.mkdir(parents=True)

    def _open_env(self, readonly: bool) -> lmdb.Environment:
        power = self.durability == "power"
        try:
            return lmdb.open(
                str(self.path),
                map_size=self.map_size_bytes,
                max_dbs=5,
                max_readers=512,
                readonly=readonly,
                readahead=False,  # random point reads; readahead only fills the cache with neighbours
                # "process": no fsync per commit (a process crash loses nothing, the page cache has it); the
                # updater calls flush() periodically. "power": fsync every commit.
                sync=power,
                metasync=power,
                writemap=not power,
                map_async=not power,
            )
        except lmdb.InvalidError as exc:
            raise NotAStore(f"{self.path}: data.mdb is not an LMDB file ({exc})") from exc
        except lmdb.VersionMismatchError as exc:
            raise NotAStore(f"{self.path}: written by an incompatible LMDB version ({exc})") from exc
        except lmdb.Error as exc:
            raise NotAStore(f"{self.path}: cannot open the LMDB environment ({exc})") from exc

    def _open_inbox_env(self, readonly: bool) -> lmdb.Environment:
        """The inbox's environment: small values written once and deleted once, by many processes. Same durability
        as the rows (``power``: fsync at every commit); no ``writemap`` (it would size the file to the map)."""
        path = self.path / INBOX_DIR
        power = self.durability == "power"
        try:
            return lmdb.open(
                str(path),
                # Address space, not disk (no writemap: the file grows with what is queued). Never smaller than
                # INBOX_MIN_MAP_BYTES: a full map would refuse even the deletes that retire applied entries.
                map_size=max(self.map_size_bytes, INBOX_MIN_MAP_BYTES),
                max_dbs=2,
                max_readers=512,
                readonly=readonly,
                readahead=False,
                sync=power,
                metasync=power,
            )
        except lmdb.Error as exc:
            raise NotAStore(f"{path}: cannot open the inbox's LMDB environment ({exc})") from exc

    def _move_legacy_inbox(self) -> None:
        """Entries a store from before the inbox environment queued in its main environment move to the inbox
        environment: copied and committed there first, then deleted here (a crash between leaves both copies, and
        the next open copies the same keys again; with ``power`` durability the copy's commit is fsynced before the
        deletion commits)."""
        with self.env.begin(write=True) as txn:
            entries = list(txn.cursor(db=self._legacy_inbox_db))
            if not entries:
                return
            with self.inbox_env.begin(write=True) as inbox:
                for key, value in entries:
                    inbox.put(key, value, db=self.inbox_db)
            txn.drop(self._legacy_inbox_db, delete=False)
        log.info("%s: moved %d queued deltas into the inbox environment", self.path, len(entries))

    def _refuse_foreign_environment(self) -> None:
        """Named databases are keys of LMDB's main database: anything else there belongs to another application."""
        with self.env.begin() as txn:
            names = {bytes(key) for key, _ in txn.cursor()}
        foreign = names - set(_DB_NAMES)
        if foreign:
            shown = ", ".join(sorted(repr(n) for n in foreign)[:5])
            raise NotAStore(f"{self.path} is an LMDB environment of another application (it holds {shown})")

    def _init_meta(self, readonly: bool) -> None:
        with self.env.begin(write=not readonly) as txn:
            fmt = txn.get(_META_FORMAT, db=self.meta_db)
            if fmt is None:
                if readonly or txn.stat(self.rows_db)["entries"]:
                    raise NotAStore(f"{self.path}: an LMDB environment without liverank's format record")
                txn.put(_META_FORMAT, STORE_FORMAT, db=self.meta_db)
            elif fmt != STORE_FORMAT:
                raise NotAStore(f"{self.path}: store format {fmt!r}, this build reads {STORE_FORMAT!r}")

    # --- lifecycle ----------------------------------------------------------------------------------------------

    def check_usable(self) -> None:
        if self._forked:
            raise StoreClosed(f"{self.path} was opened before fork(); open the store again in this process")
        if self._closed:
            raise StoreClosed(f"{self.path} is closed")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if not self._forked:
            self.inbox_env.close()
            self.env.close()
            with _open_lock:
                _open_paths.discard(self._key)
            if self in _all_stores:
                _all_stores.remove(self)

    def flush(self) -> None:
        """Force committed data to disk (what ``power`` durability does at every commit)."""
        self.check_usable()
        self.inbox_env.sync(True)
        self.env.sync(True)

    @contextmanager
    def read(self) -> Iterator[Txn]:
        """A read-only snapshot. Never waits for the writer."""
        self.check_usable()
        with self.env.begin(buffers=False) as txn:
            yield txn

    @contextmanager
    def inbox_read(self) -> Iterator[Txn]:
        """A read-only snapshot of the inbox."""
        self.check_usable()
        with self.inbox_env.begin(buffers=False) as txn:
            yield txn

    # --- slots and schema ---------------------------------------------------------------------------------------

    def slot_table(self, txn: Txn | None = None) -> dict[str, tuple[SlotConfig, int]]:
        """name -> (config, slot code)."""
        if txn is None:
            with self.read() as own:
                return self.slot_table(own)
        raw = txn.get(_META_SLOTS, db=self.meta_db)
        entries: list[dict[str, Any]] = orjson.loads(raw) if raw else []
        return {e["name"]: (SlotConfig.from_json(e), int(e["code"])) for e in entries}

    def declare_slots(self, slots: list[SlotConfig]) -> dict[str, tuple[SlotConfig, int]]:
        """Add new slots and update TTL/default of existing ones; storage-relevant changes raise ``SlotConflict``."""
        self.check_usable()
        with self.env.begin(write=True) as txn:
            table = self.slot_table(txn)
            for config in slots:
                if config.name in table:
                    old, code = table[config.name]
                    if not old.storage_compatible(config):
                        raise SlotConflict(
                            f"slot {config.name!r} is stored as dim {old.dim} {old.dtype} {old.id_kind} ids; "
                            f"cannot reopen it as dim {config.dim} {config.dtype} {config.id_kind} ids"
                        )
                    table[config.name] = (config, code)
                else:
                    code = max((c for _, c in table.values()), default=0) + 1
                    if code > 0xFFFF:
                        raise SlotConflict("a store holds at most 65535 slots")
                    table[config.name] = (config, code)
            entries = [{**cfg.to_json(), "code": code} for cfg, code in table.values()]
            txn.put(_META_SLOTS, orjson.dumps(entries), db=self.meta_db)
        return table

    def schema_hash(self, txn: Txn | None = None) -> str | None:
        if txn is None:
            with self.read() as own:
                return self.schema_hash(own)
        raw = txn.get(_META_SCHEMA, db=self.meta_db)
        return None if raw is None else bytes(raw).decode()

    def set_schema_hash(self, schema_hash: str) -> None:
        self.check_usable()
        with self.env.begin(write=True) as txn:
            txn.put(_META_SCHEMA, schema_hash.encode(), db=self.meta_db)

    # --- sequences, generation and app records ------------------------------------------------------------------

    def generation(self, txn: Txn) -> int:
        return _u64(txn.get(_META_GENERATION, db=self.meta_db))

    def applied_seq(self, txn: Txn, producer: str) -> int:
        return _u64(txn.get(_SEQ_PREFIX + producer.encode(), db=self.meta_db))

    def applied_seqs(self, txn: Txn) -> dict[str, int]:
        cursor = txn.cursor(db=self.meta_db)
        out: dict[str, int] = {}
        if cursor.set_range(_SEQ_PREFIX):
            for key, value in cursor:
                if not key.startswith(_SEQ_PREFIX):
                    break
                out[key[len(_SEQ_PREFIX) :].decode()] = _u64(value)
        return out

    def log_position(self, txn: Txn) -> int:
        """The last shared-log record applied (or skipped) here; 0 before the first (or without a log)."""
        return _u64(txn.get(_META_LOG_POSITION, db=self.meta_db))

    def advance_log_position(self, position: int, app_records: dict[str, Any] | None = None) -> None:
        """Mark a log record that changes no rows (a bundle record, a quarantined delta) as done, with the app
        records it leaves for the serving layer (e.g. the bundle to install), in one transaction."""
        self.check_usable()
        with self.env.begin(write=True) as txn:
            self._put_log_position(txn, position)
            for name, value in (app_records or {}).items():
                txn.put(_APP_PREFIX + name.encode(), orjson.dumps(value), db=self.meta_db)

    def _put_log_position(self, txn: Txn, position: int) -> None:
        if position <= self.log_position(txn):
            raise ValueError(f"log position {position} is not after {self.log_position(txn)}: records apply in order")
        txn.put(_META_LOG_POSITION, _U64.pack(position), db=self.meta_db)

    def snapshot_to(self, directory: str | os.PathLike[str]) -> dict[str, Any]:
        """Copy the environment into ``directory`` (new or empty) without stopping writers: LMDB copies the MVCC
        snapshot of one read transaction (compacted). Returns what that snapshot holds: every producer's applied
        seq, the log position and the generation, read in the same transaction."""
        self.check_usable()
        Path(directory).mkdir(parents=True, exist_ok=True)
        with self.env.begin() as txn:
            tags = {
                "applied_seq": self.applied_seqs(txn),
                "log_position": self.log_position(txn),
                "generation": self.generation(txn),
            }
            self.env.copy(str(directory), compact=True, txn=txn)
        return tags

    def drop_app_records(self, names: list[str], keep: dict[str, Any] | None = None) -> None:
        """Remove app records (and set ``keep``'s), in one transaction: e.g. a machine's own records from a store
        restored from another machine's snapshot."""
        self.check_usable()
        with self.env.begin(write=True) as txn:
            for name in names:
                txn.delete(_APP_PREFIX + name.encode(), db=self.meta_db)
            for name, value in (keep or {}).items():
                txn.put(_APP_PREFIX + name.encode(), orjson.dumps(value), db=self.meta_db)

    def row_counts(self, txn: Txn) -> dict[str, int]:
        cursor = txn.cursor(db=self.meta_db)
        out: dict[str, int] = {}
        if cursor.set_range(_ROWS_PREFIX):
            for key, value in cursor:
                if not key.startswith(_ROWS_PREFIX):
                    break
                out[key[len(_ROWS_PREFIX) :].decode()] = _u64(value)
        return out

    def get_app_record(self, name: str) -> Any:
        """A JSON record the serving layer keeps beside the rows (e.g. the live bundle), or None."""
        with self.read() as txn:
            raw = txn.get(_APP_PREFIX + name.encode(), db=self.meta_db)
        return None if raw is None else orjson.loads(raw)

    def put_app_record(self, name: str, value: Any) -> None:
        self.check_usable()
        with self.env.begin(write=True) as txn:
            txn.put(_APP_PREFIX + name.encode(), orjson.dumps(value), db=self.meta_db)

    # --- capacity -----------------------------------------------------------------------------------------------

    def used_bytes(self, txn: Txn) -> int:
        """Pages held by the databases (free-list pages are reusable, so they do not count)."""
        pages = 0
        for stat in (
            self.env.stat(),
            txn.stat(self.rows_db),
            txn.stat(self.meta_db),
            txn.stat(self._legacy_inbox_db),
            txn.stat(self.log_db),
        ):
            pages += stat["branch_pages"] + stat["leaf_pages"] + stat["overflow_pages"]
        return int(pages * self.env.stat()["psize"])

    def check_room(self, adds_rows: bool) -> None:
        """``StoreFull`` now if a delta that ``adds_rows`` would be refused (checked before publishing one ahead
        of LMDB; the write transaction checks again)."""
        with self.read() as txn:
            self._check_room(txn, adds_rows)

    def _check_room(self, txn: Txn, adds_rows: bool) -> None:
        if adds_rows and self.used_bytes(txn) > self.map_size_bytes - self.reserve_bytes:
            raise StoreFull(
                f"store map is full ({self.used_bytes(txn)} of {self.map_size_bytes} bytes used, "
                f"{self.reserve_bytes} kept for deletes); raise LIVERANK_MAP_SIZE_BYTES or delete rows"
            )

    # --- applying a delta ---------------------------------------------------------------------------------------

    def apply(
        self,
        prepared: PreparedDelta,
        payload: bytes,
        inbox_key: bytes | None = None,
        received_at_ms: int = 0,
        log_position: int | None = None,
    ) -> ApplyResult:
        """Write a validated delta's rows and advance its producer's sequence, in one write transaction.

        Re-applying an applied sequence is a no-op reported as a duplicate; a gap raises ``SequenceGap``.
        ``payload``: the delta's binary form, kept in the changelog under the new generation so that RAM tiers of
        other processes (serving workers) can follow. ``inbox_key``: an inbox entry to remove once that transaction
        has committed (exactly-once hand-off: the module docstring). ``received_at_ms``: when the delta was received
        (kept with it in the changelog, so a follower can tell how long after its receipt it became visible there).
        ``log_position``: the shared-log record this delta came from (replicated mode), recorded in the same
        transaction, duplicate or not.
        """
        self.check_usable()
        delta = prepared.delta
        seq_key = _SEQ_PREFIX + delta.producer.encode()
        result: ApplyResult
        try:
            with self.env.begin(write=True) as txn:
                applied = _u64(txn.get(seq_key, db=self.meta_db))
                if log_position is not None:
                    self._put_log_position(txn, log_position)
                if delta.seq <= applied:
                    result = ApplyResult("duplicate", delta.producer, delta.seq, self.generation(txn))
                elif delta.seq != applied + 1:
                    raise SequenceGap(delta.producer, applied + 1, delta.seq)
                else:
                    self._check_room(txn, prepared.n_rows > 0)
                    written, deleted = self._write_rows(txn, prepared)
                    generation = self.generation(txn) + 1
                    txn.put(seq_key, _U64.pack(delta.seq), db=self.meta_db)
                    txn.put(_META_GENERATION, _U64.pack(generation), db=self.meta_db)
                    self._log(txn, generation, _TIME.pack(received_at_ms) + payload)
                    result = ApplyResult("applied", delta.producer, delta.seq, generation, written, deleted)
        except lmdb.MapFullError as exc:
            raise StoreFull(
                f"store map is full ({self.map_size_bytes} bytes); the delta was not applied. "
                "Raise LIVERANK_MAP_SIZE_BYTES or delete rows"
            ) from exc
        if inbox_key is not None:
            self.remove_inbox_entry(inbox_key)
        return result

    def remove_inbox_entry(self, key: bytes) -> None:
        """Delete an inbox entry (after its delta's transaction committed, or when it is quarantined)."""
        self.check_usable()
        with self.inbox_env.begin(write=True) as txn:
            txn.delete(key, db=self.inbox_db)

    def _log(self, txn: Txn, generation: int, payload: bytes) -> None:
        """Keep the delta for followers; drop the oldest past ``changelog_generations`` entries or the byte cap.

        A changelog key is ``generation u64 BE | payload size u64 BE``: pruning reads sizes from keys, never the
        (megabyte-sized) values.
        """
        txn.put(_LOG_KEY.pack(generation, len(payload)), payload, db=self.log_db)
        total = _u64(txn.get(_META_LOG_BYTES, db=self.meta_db)) + len(payload)
        oldest_kept = generation - self.changelog_generations
        cursor = txn.cursor(db=self.log_db)
        while cursor.first():
            entry_generation, size = _LOG_KEY.unpack(cursor.key())
            if entry_generation == generation or (entry_generation > oldest_kept and total <= self.changelog_max_bytes):
                break
            total -= size
            cursor.delete()
        txn.put(_META_LOG_BYTES, _U64.pack(max(total, 0)), db=self.meta_db)

    def changelog(self, txn: Txn, after_generation: int) -> list[tuple[int, int, bytes]] | None:
        """(generation, received_at_ms, binary delta) of every generation after ``after_generation`` in ``txn``'s
        snapshot, or None if the changelog no longer reaches back that far (the follower must rebuild)."""
        wanted = self.generation(txn)
        if wanted == after_generation:
            return []
        out: list[tuple[int, int, bytes]] = []
        cursor = txn.cursor(db=self.log_db)
        if not cursor.set_range(_GEN.pack(after_generation + 1)):
            return None
        for key, value in cursor:
            generation = _LOG_KEY.unpack(key)[0]
            if generation > wanted:
                break
            out.append((generation, _TIME.unpack_from(value)[0], value[_TIME.size :]))
        complete = out and out[0][0] == after_generation + 1 and out[-1][0] == wanted
        return out if complete and len(out) == wanted - after_generation else None

    def _write_rows(self, txn: Txn, prepared: PreparedDelta) -> tuple[int, int]:
        cursor = txn.cursor(db=self.rows_db)
        written = deleted = 0
        for slot in prepared.slots:
            # Keys arrive sorted: neighbouring puts touch the same leaf pages. One pass: replace() tells new rows
            # (None) from overwritten ones, which keeps the stored row counts exact. (putmulti was tried: it needs
            # two passes to count new rows, and like replace() it gives up the GIL per row, so it was slower; the
            # GIL contention itself is avoided by writing from the writer process.)
            added = 0
            for key, value in zip(slot.keys, slot.values, strict=True):
                if cursor.replace(key, value) is None:
                    added += 1
            removed = 0
            if slot.tombstone_keys:
                present = {key for key, _ in cursor.getmulti(slot.tombstone_keys)}
                removed = len(present)
                for key in present:
                    txn.delete(key, db=self.rows_db)
            written += len(slot.keys)
            deleted += removed
            if added or removed:
                self._bump_row_count(txn, slot.config.name, added - removed)
        return written, deleted

    def _bump_row_count(self, txn: Txn, slot_name: str, change: int) -> None:
        key = _ROWS_PREFIX + slot_name.encode()
        txn.put(key, _U64.pack(max(0, _u64(txn.get(key, db=self.meta_db)) + change)), db=self.meta_db)

    def delete_rows(self, slot_name: str, keys: list[bytes]) -> int:
        """Delete rows outside any delta (expiry sweeps).

        Neither sequences nor the generation move: a swept row had already expired, and an expired row reads as
        unseen whether it is still on disk (or in the RAM tier) or not, so no reader can tell the difference.
        """
        self.check_usable()
        with self.env.begin(write=True) as txn:
            removed = sum(1 for key in keys if txn.delete(key, db=self.rows_db))
            if removed:
                self._bump_row_count(txn, slot_name, -removed)
        return removed
