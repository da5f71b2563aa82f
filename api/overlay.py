"""Read-your-writes for events: accepted events stay visible from this process's memory until the
ledger sink confirms they are in ClickHouse (or a TTL passes), so a client that POSTs and then
GETs always sees its event even though the pipeline is asynchronous."""

from __future__ import annotations

import time
from collections import OrderedDict

from ledger.store import EventFilters, Scope
from schemas.envelope import Event


class PendingEvents:
    def __init__(self, ttl_s: float) -> None:
        self._ttl = ttl_s
        self._by_scope: dict[Scope, OrderedDict[str, tuple[float, Event]]] = {}
        self._scope_of: dict[str, Scope] = {}

    def add(self, scope: Scope, ev: Event) -> None:
        self._by_scope.setdefault(scope, OrderedDict())[ev.id] = (time.monotonic(), ev)
        self._scope_of[ev.id] = scope

    def confirm(self, ids: list[str]) -> None:
        for id_ in ids:
            scope = self._scope_of.pop(id_, None)
            if scope is not None:
                bucket = self._by_scope.get(scope)
                if bucket is not None:
                    bucket.pop(id_, None)
                    if not bucket:
                        del self._by_scope[scope]

    def _expire(self, scope: Scope) -> OrderedDict[str, tuple[float, Event]]:
        bucket = self._by_scope.get(scope)
        if not bucket:
            return OrderedDict()
        cutoff = time.monotonic() - self._ttl
        while bucket:
            id_, (added, _) = next(iter(bucket.items()))
            if added >= cutoff:
                break
            bucket.popitem(last=False)
            self._scope_of.pop(id_, None)
        return bucket

    def get(self, scope: Scope, id_: str) -> Event | None:
        item = self._expire(scope).get(id_)
        return item[1] if item else None

    def matching(self, scope: Scope, filters: EventFilters, before: tuple | None) -> list[Event]:
        out = []
        for _, ev in self._expire(scope).values():
            if before is not None and (ev.created_at, ev.id) >= before:
                continue
            if filters.matches(ev):
                out.append(ev)
        return out

    def __len__(self) -> int:
        return len(self._scope_of)
