"""The commit order of every agent that writes (ingest, reason, execute, control).

An agent decides a whole batch first (pure functions; a bad record becomes a refusal, never an
exception), collects everything the batch writes in one :class:`Checkpoint`, and calls
:meth:`Checkpoint.commit`. The steps, in this order, are the durability contract:

1. **state**: executor key states go to RocksDB (synced WAL). A terminal state carries its
   receipt, so if anything below fails the replayed action re-emits that receipt instead of
   running again;
2. **produce** every output — ledger rows, dead letters, actions, config records and executor
   changelog records;
3. **acknowledge**: wait for the broker to acknowledge every one of them;
4. **local views**: remember the changelog offsets written, apply config records to this
   worker's view (the next command sees them);
5. **dedup keys**: remember the batch's ingest idempotency keys (RocksDB) — only now, so a
   crash before this point replays the batch rather than dropping its events;
6. return — the agent returns to Faust, which acks the batch and commits its offsets.

A crash between any two steps replays the batch from its last committed offset: every output
carries a deterministic id (the ledger stores each row once), executor state makes every
replayed action re-emit its receipt, and an intent without a result is re-invoked only with the
same idempotency key (see agents/executor.py). ``tests/unit/streams/test_checkpoint.py`` crashes
between each pair of steps and checks that nothing is lost or doubled.

Producer calls are bounded by the producer's own request timeout; a failure raises out of
:meth:`commit` and the batch guard (``streams/guard.py``) retries or splits the batch.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from agents.executor import StateRecord
from schemas.config import ConfigRecord
from streams.topics import (
    ACTIONS,
    DLQ,
    EXECSTATE,
    LEDGER,
    action_key,
    ledger_key,
    ledger_value,
    ledger_value_of_row,
)


class Producer(Protocol):
    async def send(
        self,
        topic: str,
        value: bytes,
        key: bytes | None = None,
        partition: int | None = None,
        headers: Any = None,
    ) -> asyncio.Future[Any]: ...


class StateStore(Protocol):
    def write(self, changes: list[tuple[int, str, StateRecord]]) -> None: ...
    def set_offset(self, partition: int, offset: int) -> None: ...


class DedupKeys(Protocol):
    def remember(self, keys: list[str]) -> None: ...


@dataclass(slots=True)
class Send:
    topic: str
    key: bytes | None
    value: bytes
    partition: int | None = None
    headers: Any = None


@dataclass
class Checkpoint:
    producer: Producer
    execstate: StateStore | None = None
    dedup: DedupKeys | None = None
    # config records are produced by ``publish_config`` (partitioned by tenant) and applied to
    # the local view by ``apply_config`` after the acknowledgement
    publish_config: Callable[[list[ConfigRecord]], Any] | None = None
    apply_config: Callable[[ConfigRecord], None] | None = None
    headers: Any = None
    sends: list[Send] = field(default_factory=list)
    states: list[tuple[int, str, StateRecord]] = field(default_factory=list)
    config: list[ConfigRecord] = field(default_factory=list)
    dedup_keys: list[str] = field(default_factory=list)

    # ---- collecting --------------------------------------------------------------------------
    # ``trace``: the Kafka headers of the span the record is produced in (schemas/tracing.py:
    # ``traceparent``), None when tracing is off or the step is not traced.
    def _headers(self, trace: Any) -> Any:
        if trace is None:
            return self.headers
        return [*self.headers, *trace] if self.headers else trace

    def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        partition: int | None = None,
        trace: Any = None,
    ) -> None:
        self.sends.append(Send(topic, key, value, partition, trace))

    def ledger(self, kind: str, obj: Any, trace: Any = None) -> None:
        self.sends.append(
            Send(
                LEDGER,
                ledger_key(obj.tenant_id),
                ledger_value(kind, obj),
                None,
                self.headers if trace is None else self._headers(trace),
            )
        )

    def ledger_row(self, kind: str, row: dict[str, Any], trace: Any = None) -> None:
        self.sends.append(
            Send(
                LEDGER,
                ledger_key(row["tenant_id"]),
                ledger_value_of_row(kind, row),
                None,
                self.headers if trace is None else self._headers(trace),
            )
        )

    def dead_letter(self, dl: Any, trace: Any = None) -> None:
        self.sends.append(
            Send(DLQ, ledger_key(dl.tenant_id), dl.model_dump_json().encode(), None, trace)
        )

    def action(self, a: Any, trace: Any = None) -> None:
        self.sends.append(Send(ACTIONS, action_key(a), a.model_dump_json().encode(), None, trace))

    def state(self, partition: int, key: str, state: StateRecord) -> None:
        self.states.append((partition, key, state))

    def __len__(self) -> int:
        return len(self.sends) + len(self.states) + len(self.config) + len(self.dedup_keys)

    # ---- committing --------------------------------------------------------------------------
    async def commit(self) -> None:
        # 1. state: executor key states to RocksDB
        if self.states:
            assert self.execstate is not None
            self.execstate.write(self.states)
        # 2. produce every output (the changelog of step 1 included)
        futures = [
            await self.producer.send(
                s.topic, s.value, key=s.key, partition=s.partition, headers=s.headers
            )
            for s in self.sends
        ]
        changelog = [
            await self.producer.send(EXECSTATE, _encode_state(state), key=key.encode(), partition=p)
            for p, key, state in self.states
        ]
        config_done = (
            self.publish_config(self.config) if self.config and self.publish_config else None
        )
        # 3. acknowledge: every record is on the broker
        await acknowledged(futures)
        metas = await acknowledged(changelog)
        if config_done is not None:
            await config_done
        # 4. local views: changelog offsets written, config applied to this worker's view
        if metas and self.execstate is not None:
            high: dict[int, int] = {}
            for (p, _, _), meta in zip(self.states, metas, strict=True):
                off = getattr(meta, "offset", None)
                if isinstance(off, int):
                    high[p] = max(high.get(p, -1), off)
            for p, off in high.items():
                self.execstate.set_offset(p, off)
        if self.apply_config is not None:
            for rec in self.config:
                self.apply_config(rec)
        # 5. dedup keys: only once the batch's events are safely on the broker
        if self.dedup_keys:
            assert self.dedup is not None
            self.dedup.remember(sorted(set(self.dedup_keys)))
        # 6. return: the agent returns to Faust, which acks the batch and commits its offsets


async def acknowledged(futures: list[Any]) -> list[Any]:
    """Every acknowledgement, or the first failure — after *all* of them settled, so no delivery
    failure goes unobserved ("exception was never retrieved") and none is still in flight."""
    if not futures:
        return []
    results = await asyncio.gather(*futures, return_exceptions=True)
    for r in results:
        if isinstance(r, BaseException):
            raise r
    return results


def _encode_state(state: StateRecord) -> bytes:
    import orjson

    return orjson.dumps(state.to_json())
