"""The ingest agent's 24 h idempotency-key memory, in RocksDB (rocksdict) on the worker's disk.

Written once per batch with one WriteBatch, after the batch's outputs were acknowledged by the
broker (so a crash in between can only cause a duplicate that downstream id-dedup removes,
never a lost event).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import cast

from rocksdict import AccessType, Options, Rdict, WriteBatch

# Idempotency keys are honoured for 24 h (API convention); RocksDB's TTL compaction drops
# older entries, and reads also check the stored time because TTL compaction is lazy.
RETENTION_S = 24 * 3600


class DedupStore:
    def __init__(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        opts = Options(raw_mode=True)
        self._db = Rdict(str(path), options=opts, access_type=AccessType.with_ttl(RETENTION_S))

    def seen(self, keys: list[str], now: float | None = None) -> set[str]:
        if not keys:
            return set()
        now = time.time() if now is None else now
        # a list key returns a list (rocksdict's stub says Any | None for every form)
        found = cast("list[bytes | None]", self._db.get([k.encode() for k in keys]))
        out = set()
        for k, v in zip(keys, found, strict=True):
            if v is not None and now - float(v.decode()) < RETENTION_S:
                out.add(k)
        return out

    def remember(self, keys: list[str], now: float | None = None) -> None:
        if not keys:
            return
        stamp = str(time.time() if now is None else now).encode()
        wb = WriteBatch(raw_mode=True)
        for k in keys:
            wb.put(k.encode(), stamp)
        self._db.write(wb)

    def close(self) -> None:
        self._db.close()
