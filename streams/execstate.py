"""The executor's seen-state: RocksDB (rocksdict) on the worker's disk, changelogged to
``fibric.execstate.v1`` so another worker can take a partition over.

Why both: the embedded broker is memory-only, so the topic alone forgets every idempotency key
when it restarts (a restart of ``fibric up`` used to let one key apply twice); the disk alone
cannot follow a partition to another worker. RocksDB is the worker's durable copy, the topic is
how state moves. Per partition the store remembers the changelog offset it has applied, so on an
assignment it reads only what other workers wrote since (``catch_up``), and it notices when the
broker lost the topic (its end offset is below what this worker already wrote) — then it
republishes its own state and re-emits its recent receipts, which a broker crash may have lost
before the ledger stored them.

Nothing here grows in memory with the number of keys: lookups are RocksDB multi-gets per batch.
Never call this from outside the worker's event loop thread (rocksdict is not async).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import cast

import orjson
from rocksdict import BlockBasedOptions, Cache, Options, Rdict, WriteBatch, WriteOptions

from agents.budget import BUDGET_PREFIX, BudgetState, merge
from agents.executor import KeyState, StateRecord

log = logging.getLogger(__name__)

_STATE = b"k"  # k<partition:05d>\x1f<state key> -> KeyState JSON (or BudgetState JSON)
_BUDGET = BUDGET_PREFIX.encode()
_OFFSET = b"o"  # o<partition:05d> -> last changelog offset applied (ASCII int)
# Receipts newer than this are re-emitted to the ledger when the broker lost its topics: the
# ledger sink inserts within ~250 ms of a record, so anything older than a few minutes is
# already in ClickHouse; 10 minutes is a wide margin at negligible cost (ids dedupe).
REEMIT_WINDOW_MS = 10 * 60 * 1000


# Memory is bounded whatever the number of keys (issue: worker RSS must not grow with the keys
# ever seen): memtables of 16 MiB, at most 2, and one LRU block cache of 32 MiB holding data,
# index and filter blocks; everything else is on disk. A bloom filter keeps a lookup of a key
# never seen (the common case) to about one memory probe.
WRITE_BUFFER_BYTES = 16 * 1024 * 1024
MAX_WRITE_BUFFERS = 2
BLOCK_CACHE_BYTES = 32 * 1024 * 1024


def _options() -> Options:
    opts = Options(raw_mode=True)
    opts.create_if_missing(True)
    opts.set_write_buffer_size(WRITE_BUFFER_BYTES)
    opts.set_max_write_buffer_number(MAX_WRITE_BUFFERS)
    table = BlockBasedOptions()
    table.set_block_cache(Cache(BLOCK_CACHE_BYTES))
    table.set_cache_index_and_filter_blocks(True)
    table.set_bloom_filter(10, False)
    opts.set_block_based_table_factory(table)
    return opts


def _state_key(partition: int, key: str) -> bytes:
    return _STATE + f"{partition:05d}\x1f{key}".encode()


def _offset_key(partition: int) -> bytes:
    return _OFFSET + f"{partition:05d}".encode()


# On the memory-only embedded broker the api republishes the changelog from the ledger at start
# (ledger/exec_restore.py); it then writes the broker's cluster id here, and a worker waits for
# that before it loads its partitions' state (decisions §49). Not used against a durable Kafka.
RESTORE_MARK = "exec-restored"


def restore_mark(home: Path) -> Path:
    return home / "run" / RESTORE_MARK


def write_restore_mark(home: Path, cluster_id: str) -> None:
    path = restore_mark(home)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(cluster_id)
    tmp.replace(path)  # atomic: a reader sees the old id or the new one


def restored_for(mark: Path, cluster_id: str) -> bool:
    try:
        return mark.read_text() == cluster_id
    except OSError:
        return False


class ExecStateStore:
    def __init__(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        self._db = Rdict(str(path), options=_options())
        # Intents and results are written with the WAL synced: a kill -9 (or power loss) right
        # after a write must not forget an intent whose tool call may already have started.
        self._sync = WriteOptions()
        self._sync.sync = True

    # ---- reads -------------------------------------------------------------------------------
    def get_many(self, keys: Iterable[tuple[int, str]]) -> dict[str, KeyState]:
        wanted = list(dict.fromkeys(keys))
        if not wanted:
            return {}
        # a list key returns a list (rocksdict's stub says Any | None for every form)
        found = cast("list[bytes | None]", self._db.get([_state_key(p, k) for p, k in wanted]))
        return {
            k: KeyState.from_json(orjson.loads(v))
            for (_, k), v in zip(wanted, found, strict=True)
            if v is not None
        }

    # The broker's cluster id is stored with every offset: an offset means nothing on another
    # cluster, and the embedded broker gets a new id each time it starts (fibric/launcher.py),
    # so "this changelog is not the one my offsets count" is detected exactly, whatever the
    # new changelog already holds (the api may have republished state into it).
    cluster_id = ""

    def position(self, partition: int) -> tuple[str, int]:
        """(cluster id, last changelog offset applied) for ``partition``; ("", -1) when none."""
        raw = self._db.get(_offset_key(partition))
        if raw is None:
            return "", -1
        cluster, _, off = raw.decode().rpartition(":")
        return cluster, int(off)

    def offset(self, partition: int) -> int:
        """Last changelog offset applied for ``partition`` on this cluster; -1 when none."""
        cluster, off = self.position(partition)
        return off if cluster == self.cluster_id else -1

    def get_budgets(self, keys: Iterable[tuple[int, str]]) -> dict[tuple[int, str], BudgetState]:
        """Budget states (agents/budget.py) by (partition, budget key); absent ones are left out."""
        wanted = list(dict.fromkeys(keys))
        if not wanted:
            return {}
        found = cast("list[bytes | None]", self._db.get([_state_key(p, k) for p, k in wanted]))
        return {
            pk: BudgetState.from_json(orjson.loads(v))
            for pk, v in zip(wanted, found, strict=True)
            if v is not None
        }

    def has_state(self, partition: int) -> bool:
        return next(self._raw(partition), None) is not None

    def _raw(self, partition: int) -> Iterator[tuple[bytes, bytes]]:
        prefix = _STATE + f"{partition:05d}\x1f".encode()
        it = self._db.iter()
        it.seek(prefix)
        while it.valid():
            k = it.key()
            if not k.startswith(prefix):
                break
            yield k[len(prefix) :], it.value()
            it.next()

    def entries(self, partition: int) -> Iterator[tuple[str, KeyState]]:
        """The idempotency keys' states of ``partition`` (budget records are left out)."""
        for k, v in self._raw(partition):
            if not k.startswith(_BUDGET):
                yield k.decode(), KeyState.from_json(orjson.loads(v))

    def budget_entries(self, partition: int) -> Iterator[tuple[str, BudgetState]]:
        for k, v in self._raw(partition):
            if k.startswith(_BUDGET):
                yield k.decode(), BudgetState.from_json(orjson.loads(v))

    def recent_receipts(self, partition: int, now_ms: int | None = None) -> list[dict]:
        """Receipts of states written in the last :data:`REEMIT_WINDOW_MS`."""
        since = (now_ms if now_ms is not None else int(time.time() * 1000)) - REEMIT_WINDOW_MS
        return [s.receipt for _, s in self.entries(partition) if s.at_ms >= since and s.receipt]

    # ---- writes ------------------------------------------------------------------------------
    def write(self, changes: Iterable[tuple[int, str, StateRecord]]) -> None:
        wb = WriteBatch(raw_mode=True)
        n = 0
        for p, k, s in changes:
            wb.put(_state_key(p, k), orjson.dumps(s.to_json()))
            n += 1
        if n:
            self._db.write(wb, self._sync)

    def apply_changelog(self, partition: int, records: Iterable[tuple[int, bytes, bytes]]) -> int:
        """Apply changelog records (offset, key, value) another worker wrote; returns how many."""
        wb = WriteBatch(raw_mode=True)
        last, n = None, 0
        for offset, key, value in records:
            if value:
                full = _STATE + f"{partition:05d}\x1f".encode() + key
                if key.startswith(_BUDGET) and b'"restored":true' in value:
                    value = self._merged(full, value)
                wb.put(full, value)
            n += 1
            last = offset
        if last is not None:
            wb.put(_offset_key(partition), self._offset_value(last))
            self._db.write(wb, self._sync)
        return n

    def _merged(self, full_key: bytes, value: bytes) -> bytes:
        """A budget record the api rebuilt from the ledger (agents/budget.py ``rebuilt``): merged
        into this disk's own record of the key, which may hold reservations the ledger has no
        receipt for yet; taken as it is when this disk has none."""
        mine = self._db.get(full_key)
        if mine is None:
            return value
        merged = merge(
            BudgetState.from_json(orjson.loads(mine)), BudgetState.from_json(orjson.loads(value))
        )
        return orjson.dumps(merged.to_json())

    def _offset_value(self, offset: int) -> bytes:
        return f"{self.cluster_id}:{offset}".encode()

    def set_offset(self, partition: int, offset: int) -> None:
        """Remember that the changelog holds everything up to ``offset`` for ``partition``."""
        if offset > self.offset(partition):
            self._db.put(_offset_key(partition), self._offset_value(offset))

    def reset_offset(self, partition: int, offset: int) -> None:
        self._db.put(_offset_key(partition), self._offset_value(offset))

    def close(self) -> None:
        self._db.close()
