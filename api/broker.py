"""The api's waits on the broker, bounded: while the broker is down or stalled a request that
needs it fails within :data:`BROKER_WAIT_S` with 503 ``service_unavailable`` and Retry-After
(mapped in :func:`api.errors.to_error`), instead of hanging until aiokafka's own timeouts.

Only waits a client is blocked on go through here; the ledger sink and the config view's
consumers keep their own retry loops and must never be wrapped."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, TypeVar

from aiokafka.errors import KafkaError
from aiokafka.partitioner import DefaultPartitioner, murmur2

T = TypeVar("T")

# A healthy broker acknowledges one record in milliseconds (S1's produce p99 is tens of ms, and
# aiokafka's request timeout, streams.kafka.REQUEST_TIMEOUT_MS = 15 s, is sized for big batches
# under load). 5 s trips only when the broker is unreachable or stalled, and answers well inside
# the 10-30 s timeouts HTTP clients commonly use.
BROKER_WAIT_S = 5.0


class BrokerUnavailable(Exception):
    """The broker did not answer a wait a request depends on (reported as 503)."""


async def bounded(aw: Awaitable[T], timeout: float = BROKER_WAIT_S) -> T:
    """Await ``aw`` for at most ``timeout`` seconds; a timeout or a Kafka error is
    :class:`BrokerUnavailable`. A record whose send timed out may still be delivered later if
    the broker recovers: the client sees 503 and retries (same Idempotency-Key)."""
    try:
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for runs the awaitable in a new
        # task (~20 µs per POST /v1/events); the deadline's semantics are the same
        async with asyncio.timeout(timeout):
            return await aw
    except (TimeoutError, KafkaError) as exc:
        raise BrokerUnavailable(f"{type(exc).__name__}: {exc}") from exc


# Keys whose partition the api remembers (entity keys repeat: an order's events share one). A
# key is ~40 bytes; 65,536 of them cost a few MiB.
PARTITION_CACHE_KEYS = 65_536


class CachingPartitioner:
    """aiokafka's default partitioner (murmur2 of the key, as every Kafka client), remembering
    the answer per key: aiokafka computes murmur2 in pure Python, ~3 % of the api's CPU under S2
    (decisions §46). Keyless records go to a random available partition, as the default does."""

    def __init__(self, size: int = PARTITION_CACHE_KEYS) -> None:
        self._default = DefaultPartitioner()
        self._size = size
        self._cache: dict[tuple[bytes, int], int] = {}

    def __call__(self, key: bytes | None, all_partitions: list[int], available: list[int]) -> int:
        if key is None:
            return self._default(key, all_partitions, available)
        n = len(all_partitions)
        slot = self._cache.get((key, n))
        if slot is None:
            if len(self._cache) >= self._size:
                self._cache.clear()  # rare: cheaper than an LRU's bookkeeping on every hit
            slot = self._cache[(key, n)] = (murmur2(key) & 0x7FFFFFFF) % n
        return all_partitions[slot]


class BoundedProducer:
    """The api's producer as handlers see it: ``send_and_wait`` and ``send`` (and the delivery
    future ``send`` returns) are bounded by :func:`bounded`; everything else passes through."""

    def __init__(self, producer: Any, timeout: float = BROKER_WAIT_S) -> None:
        self._producer = producer
        self._timeout = timeout

    async def send_and_wait(self, *args: Any, **kwargs: Any) -> Any:
        return await bounded(self._producer.send_and_wait(*args, **kwargs), self._timeout)

    async def send(self, *args: Any, **kwargs: Any) -> Awaitable[Any]:
        # send() itself waits for topic metadata and buffer space; the future it returns
        # resolves on the broker's acknowledgement.
        delivery = await bounded(self._producer.send(*args, **kwargs), self._timeout)
        return bounded(delivery, self._timeout)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._producer, name)
