"""The idempotency journal of a connector server: idempotency key -> recorded result.

A side effect is applied at most once per key: the intent is recorded (``pending``) before the
upstream call and the result (``done``) before the tool returns, in a small SQLite file under
the connector's state dir (several server processes of one instance may share it). A repeated
key returns the recorded result without calling upstream. A key whose earlier attempt ended
with an unknown outcome (crash, timeout) is never blindly re-applied: the caller reconciles it
against the upstream state first (see ``server.py``).

Blocking SQLite calls run in a worker thread. This module must never store credentials, and it
never deletes ``done`` rows (the executor's keys are permanent, ARCHITECTURE.md §6).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sqlite3
import time
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

JOURNAL_FILE = "idempotency.sqlite3"
# How long a second process waits for a key another live process is applying right now before
# giving up with an error; longer than any upstream call we make (server timeouts are < 10 s).
LIVE_PENDING_WAIT_S = 15.0
LIVE_PENDING_POLL_S = 0.05
# SQLite's own wait for a lock held by another process sharing the file.
SQLITE_BUSY_TIMEOUT_S = 10.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS idempotency (
    key         TEXT PRIMARY KEY,
    tool        TEXT NOT NULL,
    args_hash   TEXT NOT NULL,
    state       TEXT NOT NULL,   -- pending | unknown | done
    owner_pid   INTEGER,
    result      TEXT,
    created_at  REAL NOT NULL,
    updated_at  REAL NOT NULL
)
"""


class Claim(StrEnum):
    NEW = "new"  # first time: the caller applies the effect
    DONE = "done"  # already applied: return ``result``
    MISMATCH = "mismatch"  # the key was used for another tool or other arguments
    BUSY = "busy"  # another live process is applying it right now
    RECONCILE = "reconcile"  # an earlier attempt's outcome is unknown: check upstream first


@dataclass(frozen=True)
class ClaimResult:
    claim: Claim
    result: Any = None
    tool: str | None = None


def args_fingerprint(tool: str, args: dict[str, Any]) -> str:
    """Stable hash of a tool call's business arguments (pure; key and dry_run excluded)."""
    business = {k: v for k, v in args.items() if k not in ("idempotency_key", "dry_run")}
    blob = json.dumps([tool, business], sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def _pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class IdempotencyJournal:
    def __init__(self, state_dir: Path) -> None:
        state_dir.mkdir(parents=True, exist_ok=True)
        self.path = state_dir / JOURNAL_FILE
        self._conn = sqlite3.connect(
            self.path,
            timeout=SQLITE_BUSY_TIMEOUT_S,
            isolation_level=None,
            check_same_thread=False,
        )
        self._conn.execute("PRAGMA journal_mode=WAL")
        # FULL: a recorded result survives a power cut, so a replay never re-applies.
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.execute(_SCHEMA)
        os.chmod(self.path, 0o600)
        self._pid = os.getpid()
        # Keys this process is applying now; serialises same-key calls inside the process.
        self._local: dict[str, asyncio.Lock] = {}
        self._db_lock = asyncio.Lock()  # one sqlite connection: one statement batch at a time

    # ---- blocking primitives (run in a thread) -------------------------------------------
    def _claim_sync(self, key: str, tool: str, args_hash: str) -> ClaimResult:
        c = self._conn
        now = time.time()
        c.execute("BEGIN IMMEDIATE")
        try:
            row = c.execute(
                "SELECT tool, args_hash, state, owner_pid, result FROM idempotency WHERE key=?",
                (key,),
            ).fetchone()
            if row is None:
                c.execute(
                    "INSERT INTO idempotency VALUES (?,?,?,?,?,?,?,?)",
                    (key, tool, args_hash, "pending", self._pid, None, now, now),
                )
                c.execute("COMMIT")
                return ClaimResult(Claim.NEW)
            r_tool, r_hash, state, owner, result = row
            if r_tool != tool or r_hash != args_hash:
                c.execute("COMMIT")
                return ClaimResult(Claim.MISMATCH, tool=r_tool)
            if state == "done":
                c.execute("COMMIT")
                return ClaimResult(Claim.DONE, json.loads(result))
            if state == "pending" and owner != self._pid and _pid_alive(owner):
                c.execute("COMMIT")
                return ClaimResult(Claim.BUSY)
            # "unknown", or "pending" left by a dead process — or by this pid, whose live calls
            # hold the key's local lock, so a pending row we can see here is from an earlier
            # incarnation: the outcome is unknown. Take it over and reconcile.
            c.execute(
                "UPDATE idempotency SET state='pending', owner_pid=?, updated_at=? WHERE key=?",
                (self._pid, now, key),
            )
            c.execute("COMMIT")
            return ClaimResult(Claim.RECONCILE)
        except BaseException:
            c.execute("ROLLBACK")
            raise

    def _finish_sync(self, key: str, state: str, result: Any) -> None:
        blob = None if result is None else json.dumps(result, default=str)
        self._conn.execute(
            "UPDATE idempotency SET state=?, result=?, owner_pid=?, updated_at=? WHERE key=?",
            (state, blob, self._pid, time.time(), key),
        )

    def _forget_sync(self, key: str) -> None:
        self._conn.execute("DELETE FROM idempotency WHERE key=? AND state!='done'", (key,))

    def _state_sync(self, key: str) -> tuple[str, Any] | None:
        row = self._conn.execute(
            "SELECT state, result FROM idempotency WHERE key=?", (key,)
        ).fetchone()
        if row is None:
            return None
        return row[0], (json.loads(row[1]) if row[1] else None)

    async def _db(self, fn: Any, *args: Any, **kw: Any) -> Any:
        async with self._db_lock:
            return await asyncio.to_thread(fn, *args, **kw)

    # ---- async API -----------------------------------------------------------------------
    def local_lock(self, key: str) -> asyncio.Lock:
        lock = self._local.get(key)
        if lock is None:
            lock = self._local[key] = asyncio.Lock()
        return lock

    def release_local(self, key: str) -> None:
        lock = self._local.get(key)
        if lock is not None and not lock.locked():
            self._local.pop(key, None)

    async def claim(self, key: str, tool: str, args_hash: str) -> ClaimResult:
        """Claim ``key`` (caller holds ``local_lock(key)``); waits out a live other owner."""
        deadline = time.monotonic() + LIVE_PENDING_WAIT_S
        while True:
            res = await self._db(self._claim_sync, key, tool, args_hash)
            if res.claim is not Claim.BUSY or time.monotonic() >= deadline:
                return res
            await asyncio.sleep(LIVE_PENDING_POLL_S)

    async def record_done(self, key: str, result: Any) -> None:
        await self._db(self._finish_sync, key, "done", result)

    async def record_unknown(self, key: str) -> None:
        await self._db(self._finish_sync, key, "unknown", None)

    async def forget(self, key: str) -> None:
        """The attempt certainly applied nothing (e.g. upstream refused it): free the key."""
        await self._db(self._forget_sync, key)

    async def state(self, key: str) -> tuple[str, Any] | None:
        return await self._db(self._state_sync, key)

    def close(self) -> None:
        self._conn.close()
