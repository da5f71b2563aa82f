"""The idempotency journal: claim, replay, mismatch, forget, and unknown outcomes."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from connectors.journal import Claim, IdempotencyJournal, args_fingerprint


def test_fingerprint_ignores_key_and_dry_run_and_is_stable():
    a = args_fingerprint("order.hold", {"order_id": "1", "idempotency_key": "a", "dry_run": False})
    b = args_fingerprint("order.hold", {"dry_run": True, "order_id": "1", "idempotency_key": "b"})
    assert a == b
    assert a != args_fingerprint("order.hold", {"order_id": "2"})
    assert a != args_fingerprint("order.release", {"order_id": "1"})


@pytest.fixture
def journal(tmp_path: Path):
    j = IdempotencyJournal(tmp_path)
    yield j
    j.close()


async def test_new_then_done_then_replay(journal: IdempotencyJournal, tmp_path: Path):
    h = args_fingerprint("t.do", {"x": 1})
    assert (await journal.claim("k", "t.do", h)).claim is Claim.NEW
    assert await journal.state("k") == ("pending", None)
    await journal.record_done("k", {"ok": True})
    again = await journal.claim("k", "t.do", h)
    assert (again.claim, again.result) == (Claim.DONE, {"ok": True})
    # durable: a new journal on the same file (a restarted server) still replays
    other = IdempotencyJournal(tmp_path)
    assert (await other.claim("k", "t.do", h)).claim is Claim.DONE
    other.close()
    assert oct((tmp_path / "idempotency.sqlite3").stat().st_mode & 0o777) == "0o600"


async def test_mismatch(journal: IdempotencyJournal):
    await journal.claim("k", "t.do", "h1")
    await journal.record_done("k", 1)
    assert (await journal.claim("k", "t.do", "h2")).claim is Claim.MISMATCH
    res = await journal.claim("k", "t.other", "h1")
    assert (res.claim, res.tool) == (Claim.MISMATCH, "t.do")


async def test_forget_frees_the_key_but_never_a_done_one(journal: IdempotencyJournal):
    await journal.claim("k", "t.do", "h")
    await journal.forget("k")
    assert await journal.state("k") is None
    assert (await journal.claim("k", "t.do", "h")).claim is Claim.NEW
    await journal.record_done("k", 5)
    await journal.forget("k")
    assert await journal.state("k") == ("done", 5)


async def test_unknown_outcome_must_be_reconciled(journal: IdempotencyJournal):
    await journal.claim("k", "t.do", "h")
    await journal.record_unknown("k")
    assert (await journal.claim("k", "t.do", "h")).claim is Claim.RECONCILE


def _dead_pid() -> int:
    proc = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    return int(proc.stdout)


async def test_pending_row_of_a_dead_process_is_reconciled(tmp_path: Path):
    # A server claimed the key and died before recording a result.
    dead_pid = _dead_pid()
    j = IdempotencyJournal(tmp_path)
    await j.claim("k", "t.do", "h")
    j.close()
    with sqlite3.connect(tmp_path / "idempotency.sqlite3") as c:
        c.execute("UPDATE idempotency SET owner_pid=? WHERE key='k'", (dead_pid,))
    j = IdempotencyJournal(tmp_path)
    assert (await j.claim("k", "t.do", "h")).claim is Claim.RECONCILE
    j.close()
