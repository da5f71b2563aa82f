"""The batch guard: a poison record is isolated and dead-lettered, the records around it are
processed in order; a transient failure is retried, never split or skipped."""

from __future__ import annotations

import asyncio

from aiokafka.errors import KafkaConnectionError

from streams import guard
from streams.guard import Health, guarded


async def test_a_poison_record_is_isolated_and_the_rest_processed_in_order(monkeypatch):
    monkeypatch.setattr(guard, "RETRY_FIRST_S", 0.001)
    done: list[int] = []
    poisoned: list[int] = []

    async def process(batch):
        if 13 in batch:
            raise TypeError("cannot serialise")
        done.extend(batch)

    async def poison(rec, exc):
        poisoned.append(rec)

    health = Health()
    await guarded("ingest", health, list(range(40)), process, poison)
    assert poisoned == [13]
    assert done == [i for i in range(40) if i != 13]
    assert health.poisoned == 1 and health.retrying_since == {}


async def test_transient_failures_retry_the_same_batch(monkeypatch):
    monkeypatch.setattr(guard, "RETRY_FIRST_S", 0.001)
    attempts: list[list[int]] = []

    async def process(batch):
        attempts.append(list(batch))
        if len(attempts) < 4:
            raise KafkaConnectionError("broker down")

    async def poison(rec, exc):
        raise AssertionError("nothing is poison here")

    await guarded("execute", Health(), [1, 2, 3], process, poison)
    assert attempts == [[1, 2, 3]] * 4


async def test_a_long_retry_is_reported_stalled(monkeypatch):
    monkeypatch.setattr(guard, "RETRY_FIRST_S", 0.01)
    monkeypatch.setattr(guard, "RETRY_MAX_S", 0.01)
    health = Health()
    release = asyncio.Event()

    async def process(batch):
        if not release.is_set():
            raise KafkaConnectionError("broker down")

    async def poison(rec, exc):
        raise AssertionError

    task = asyncio.ensure_future(guarded("ingest", health, [1], process, poison))
    await asyncio.sleep(0.05)
    since = health.retrying_since["ingest"]
    assert health.stalled(now=since + guard.STALL_REPORT_S + 1) == {
        "ingest": guard.STALL_REPORT_S + 1
    }
    assert health.stalled(now=since + 1) == {}
    release.set()
    await task
    assert health.stalled() == {}


async def test_a_refusal_that_cannot_be_written_does_not_crash_the_agent(monkeypatch):
    monkeypatch.setattr(guard, "RETRY_FIRST_S", 0.001)

    async def process(batch):
        raise ValueError("bad")

    async def poison(rec, exc):
        raise RuntimeError("dlq write bug")

    await guarded("control", Health(), ["x"], process, poison)  # returns, logs
