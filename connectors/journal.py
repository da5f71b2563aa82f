"""The idempotency journal of a connector server: idempotency key -> recorded result.

A side effect is applied at most once per key: the intent is recorded (``pending``) before the
upstream call and the result (``done``) before the tool returns, in a small SQLite file under
the connector's state dir (several server processes of one instance may share it). A repeated
key returns the recorded result without calling upstream. A key whose earlier attempt ended
with an unknown outcome (crash, timeout) is never blindly re-applied: the caller reconciles it
against the upstream state first (see ``server.py``).

Group commit: one writer task owns the SQLite connections; every claim and finish queued while
it writes goes into its next transaction (results first, then intents), so concurrent calls and
batches (``claim_many`` / ``finish_many``) share one commit — and one fsync. A claim's future
resolves only once its transaction committed: every intent is durable before its upstream call,
every result is written before its call answers.

Durability (decisions.md §25): intents are committed with ``synchronous=FULL`` (the WAL is
fsynced before the upstream call: a power cut can never forget a claimed key, so a re-invoked
key is reconciled, never blindly re-applied); results and forgets with ``synchronous=NORMAL``
(written to the WAL before the tool returns, so a crashed process never loses one; made durable
by the next intent's fsync or checkpoint; a power cut can at worst turn a recorded result back
into a pending intent, which a retry reconciles).

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
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
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


class Finish(StrEnum):
    """How an attempt ends in the journal."""

    DONE = "done"  # applied: the result is recorded and replayed for the key
    UNKNOWN = "unknown"  # maybe applied: a retry reconciles before re-applying
    FORGET = "forget"  # certainly applied nothing: the key is free for a retry


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


@dataclass(frozen=True)
class _Job:
    """Work for the journal's writer: ``claim`` (list of (key, tool, args_hash)), ``finish``
    (list of (key, Finish, result)) or ``state`` (a key); ``future`` gets the answer."""

    kind: str
    payload: Any
    future: asyncio.Future[Any]


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
        # Two connections to one file, one per durability level (module docstring): intents
        # are fsynced at commit, results are not (they ride on the next fsync).
        self._conn = self._connect("FULL")
        self._conn.execute(_SCHEMA)
        self._result_conn = self._connect("NORMAL")
        os.chmod(self.path, 0o600)
        self._pid = os.getpid()
        # Keys this process is applying now -> [lock, holders + waiters]; serialises same-key
        # calls inside the process. Counted, so an entry is dropped only when nobody waits.
        self._local: dict[str, list[Any]] = {}
        # Group commit (module docstring): work queued for the writer, and the writer task.
        self._queue: list[_Job] = []
        self._writer: asyncio.Task[None] | None = None

    def _connect(self, synchronous: str) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path,
            timeout=SQLITE_BUSY_TIMEOUT_S,
            isolation_level=None,
            check_same_thread=False,
        )
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={synchronous}")
        return conn

    # ---- blocking primitives (run in a thread) -------------------------------------------
    def _claim_row(self, key: str, tool: str, args_hash: str, row: Any, now: float) -> ClaimResult:
        """Decide one key's claim from its row (inside the caller's transaction)."""
        c = self._conn
        if row is None:
            c.execute(
                "INSERT INTO idempotency VALUES (?,?,?,?,?,?,?,?)",
                (key, tool, args_hash, "pending", self._pid, None, now, now),
            )
            return ClaimResult(Claim.NEW)
        r_tool, r_hash, state, owner, result = row
        if r_tool != tool or r_hash != args_hash:
            return ClaimResult(Claim.MISMATCH, tool=r_tool)
        if state == "done":
            return ClaimResult(Claim.DONE, json.loads(result))
        if state == "pending" and owner != self._pid and _pid_alive(owner):
            return ClaimResult(Claim.BUSY)
        # "unknown", or "pending" left by a dead process — or by this pid, whose live calls
        # hold the key's local lock, so a pending row we can see here is from an earlier
        # incarnation: the outcome is unknown. Take it over and reconcile.
        c.execute(
            "UPDATE idempotency SET state='pending', owner_pid=?, updated_at=? WHERE key=?",
            (self._pid, now, key),
        )
        return ClaimResult(Claim.RECONCILE)

    def _claim_many_sync(self, items: Sequence[tuple[str, str, str]]) -> list[ClaimResult]:
        """Claim distinct keys ``(key, tool, args_hash)`` in one transaction (one fsync)."""
        c = self._conn
        now = time.time()
        c.execute("BEGIN IMMEDIATE")
        try:
            out = []
            for key, tool, args_hash in items:
                row = c.execute(
                    "SELECT tool, args_hash, state, owner_pid, result FROM idempotency WHERE key=?",
                    (key,),
                ).fetchone()
                out.append(self._claim_row(key, tool, args_hash, row, now))
            c.execute("COMMIT")
            return out
        except BaseException:
            c.execute("ROLLBACK")
            raise

    def _finish_many_sync(self, records: Iterable[tuple[str, Finish, Any]]) -> None:
        """Record how attempts ended, in one transaction (not fsynced: module docstring)."""
        c = self._result_conn
        now = time.time()
        updates, forgets = [], []
        for key, finish, result in records:
            if finish is Finish.FORGET:
                forgets.append((key,))
            else:
                blob = None if result is None else json.dumps(result, default=str)
                updates.append((str(finish), blob, self._pid, now, key))
        if not updates and not forgets:
            return
        c.execute("BEGIN IMMEDIATE")
        try:
            if updates:
                c.executemany(
                    "UPDATE idempotency SET state=?, result=?, owner_pid=?, updated_at=? "
                    "WHERE key=?",
                    updates,
                )
            if forgets:
                c.executemany("DELETE FROM idempotency WHERE key=? AND state!='done'", forgets)
            c.execute("COMMIT")
        except BaseException:
            c.execute("ROLLBACK")
            raise

    def _state_sync(self, key: str) -> tuple[str, Any] | None:
        row = self._conn.execute(
            "SELECT state, result FROM idempotency WHERE key=?", (key,)
        ).fetchone()
        if row is None:
            return None
        return row[0], (json.loads(row[1]) if row[1] else None)

    def _write_sync(self, jobs: list[_Job]) -> list[Any]:
        """One writer pass: every queued finish in one transaction, then every queued claim in
        another (fsynced), then reads. A job's answer, or the exception it fails with."""
        out: list[Any] = [None] * len(jobs)
        finishes = [(i, j) for i, j in enumerate(jobs) if j.kind == "finish"]
        claims = [(i, j) for i, j in enumerate(jobs) if j.kind == "claim"]
        if finishes:
            try:
                self._finish_many_sync([r for _, j in finishes for r in j.payload])
            except Exception as exc:  # noqa: BLE001 - handed to every waiter of this group
                for i, _ in finishes:
                    out[i] = exc
        if claims:
            try:
                answers = self._claim_many_sync([c for _, j in claims for c in j.payload])
            except Exception as exc:  # noqa: BLE001 - handed to every waiter of this group
                for i, _ in claims:
                    out[i] = exc
            else:
                pos = 0
                for i, j in claims:
                    out[i] = answers[pos : pos + len(j.payload)]
                    pos += len(j.payload)
        for i, j in enumerate(jobs):
            if j.kind == "state":
                try:
                    out[i] = self._state_sync(j.payload)
                except Exception as exc:  # noqa: BLE001
                    out[i] = exc
        return out

    async def _submit(self, kind: str, payload: Any) -> Any:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.append(_Job(kind, payload, fut))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._drain(), name="journal-writer")
        return await fut

    async def _drain(self) -> None:
        while self._queue:
            jobs, self._queue = self._queue, []
            try:
                # shielded: a cancelled waiter must not abandon a transaction in the thread
                answers = await asyncio.shield(asyncio.to_thread(self._write_sync, jobs))
            except BaseException as exc:
                for j in jobs:
                    if not j.future.done():
                        j.future.set_exception(
                            exc if isinstance(exc, Exception) else RuntimeError(repr(exc))
                        )
                raise
            for j, answer in zip(jobs, answers, strict=True):
                if j.future.done():  # the waiter was cancelled meanwhile
                    continue
                if isinstance(answer, Exception):
                    j.future.set_exception(answer)
                else:
                    j.future.set_result(answer)

    # ---- async API -----------------------------------------------------------------------
    @asynccontextmanager
    async def hold(self, keys: Iterable[str]) -> AsyncIterator[None]:
        """Hold the in-process locks of ``keys`` (distinct): no other call of this process
        applies one of them meanwhile. Taken in sorted order, so two batches never deadlock."""
        counted: list[str] = []
        acquired: list[str] = []
        try:
            for key in sorted(keys):
                entry = self._local.get(key)
                if entry is None:
                    entry = self._local[key] = [asyncio.Lock(), 0]
                entry[1] += 1
                counted.append(key)
                await entry[0].acquire()
                acquired.append(key)
            yield
        finally:
            for key in acquired:
                self._local[key][0].release()
            for key in counted:
                entry = self._local[key]
                entry[1] -= 1
                if entry[1] == 0:  # nobody holds or waits for it: drop the entry
                    del self._local[key]

    async def claim(self, key: str, tool: str, args_hash: str) -> ClaimResult:
        """Claim ``key`` (caller holds it, ``hold``); waits out a live other owner."""
        deadline = time.monotonic() + LIVE_PENDING_WAIT_S
        while True:
            (res,) = await self._submit("claim", [(key, tool, args_hash)])
            if res.claim is not Claim.BUSY or time.monotonic() >= deadline:
                return res
            await asyncio.sleep(LIVE_PENDING_POLL_S)

    async def claim_many(self, items: Sequence[tuple[str, str, str]]) -> list[ClaimResult]:
        """Claim distinct keys (caller holds them) in one transaction; BUSY is not waited out."""
        if not items:
            return []
        return await self._submit("claim", list(items))

    async def finish_many(self, records: Sequence[tuple[str, Finish, Any]]) -> None:
        if records:
            await self._submit("finish", list(records))

    async def record_done(self, key: str, result: Any) -> None:
        await self.finish_many([(key, Finish.DONE, result)])

    async def record_unknown(self, key: str) -> None:
        await self.finish_many([(key, Finish.UNKNOWN, None)])

    async def forget(self, key: str) -> None:
        """The attempt certainly applied nothing (e.g. upstream refused it): free the key."""
        await self.finish_many([(key, Finish.FORGET, None)])

    async def state(self, key: str) -> tuple[str, Any] | None:
        return await self._submit("state", key)

    def close(self) -> None:
        self._result_conn.close()
        self._conn.close()
