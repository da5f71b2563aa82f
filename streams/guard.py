"""Batch guard: one bad record must never stop a partition, and a stuck one must be visible.

Agents decide records with pure functions that refuse bad input instead of raising, so a batch
fails only when (a) the broker or the disk is unavailable — transient: the same batch is retried
with backoff, never skipped — or (b) a record hits a bug or a limit the pure checks missed —
deterministic: retrying would stall the partition for every tenant behind it forever. For (b)
the guard splits the batch in halves (keeping order) and processes each; a single record that
still fails is handed to the agent's ``poison`` callback, which writes a dead-letter refusal
record for it, and the partition moves on.

While a batch is being retried the agent is reported *stalled* (heartbeats carry it, ``/readyz``
turns red after :data:`STALL_REPORT_S`) so an operator sees a stuck pipeline instead of a green
dashboard.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from aiokafka.errors import KafkaError

log = logging.getLogger(__name__)

T = TypeVar("T")

# Failures that say nothing about the records: the broker, the network or the disk.
TRANSIENT = (KafkaError, OSError, TimeoutError, ConnectionError)
# Backoff for transient failures: fast first retry (a broker restart takes ~1 s), capped so a
# recovered broker is used within seconds.
RETRY_FIRST_S = 0.5
RETRY_MAX_S = 10.0
# A deterministic failure is retried this many times before the batch is split: a bug that
# depends on timing (a race with a rebalance) gets a second chance, a poison record does not
# cost more than a moment.
DETERMINISTIC_ATTEMPTS = 2
# An agent retrying for longer than this is reported stalled.
STALL_REPORT_S = 10.0


class Health:
    """What the guards of one worker report in its heartbeat."""

    def __init__(self) -> None:
        self.retrying_since: dict[str, float] = {}
        self.poisoned = 0

    def stalled(self, now: float | None = None) -> dict[str, float]:
        """Agents retrying for longer than :data:`STALL_REPORT_S`, with seconds so far."""
        now = time.monotonic() if now is None else now
        return {
            name: round(now - since, 1)
            for name, since in self.retrying_since.items()
            if now - since >= STALL_REPORT_S
        }


async def guarded(
    name: str,
    health: Health,
    batch: Sequence[T],
    process: Callable[[Sequence[T]], Awaitable[None]],
    poison: Callable[[T, BaseException], Awaitable[None]],
) -> None:
    """Process ``batch`` until it succeeds; split it around records that cannot be processed."""
    delay = RETRY_FIRST_S
    failures = 0
    try:
        while True:
            try:
                await process(batch)
                return
            except asyncio.CancelledError:
                raise
            except TRANSIENT as exc:
                health.retrying_since.setdefault(name, time.monotonic())
                log.warning(
                    "%s: batch of %d failed (%s); retrying in %.1fs",
                    name,
                    len(batch),
                    type(exc).__name__,
                    delay,
                )
            except Exception as exc:  # noqa: BLE001 - split below, never skipped silently
                failures += 1
                if failures >= DETERMINISTIC_ATTEMPTS:
                    await _split(name, health, batch, process, poison, exc)
                    return
                log.exception("%s: batch of %d failed; retrying once", name, len(batch))
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_S)
    finally:
        health.retrying_since.pop(name, None)


async def _split(
    name: str,
    health: Health,
    batch: Sequence[T],
    process: Callable[[Sequence[T]], Awaitable[None]],
    poison: Callable[[T, BaseException], Awaitable[None]],
    exc: BaseException,
) -> None:
    if len(batch) == 1:
        health.poisoned += 1
        log.error(
            "%s: a record cannot be processed (%s); dead-lettering it", name, type(exc).__name__
        )
        await _retry_transient(name, health, lambda: poison(batch[0], exc))
        return
    mid = len(batch) // 2
    for half in (batch[:mid], batch[mid:]):
        await guarded(name, health, half, process, poison)


async def _retry_transient(name: str, health: Health, fn: Callable[[], Awaitable[Any]]) -> None:
    delay = RETRY_FIRST_S
    while True:
        try:
            await fn()
            return
        except asyncio.CancelledError:
            raise
        except TRANSIENT:
            health.retrying_since.setdefault(name, time.monotonic())
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_S)
        except Exception:  # noqa: BLE001 - the refusal itself cannot be written: log, move on
            log.exception("%s: could not dead-letter a record", name)
            return
