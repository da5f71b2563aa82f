"""Budgets (blast radius, decisions §36): pure sliding-window accounting. No I/O here.

A tenant guardrail policy's ``budgets`` cap what the side effects they match may do over a
sliding window: at most ``max_count`` executions and/or a summed action ``value`` of at most
``max_value``, counted separately ``per`` operator, connector, tool and/or entity. The executor
(``streams/executor.py``) keeps one :class:`BudgetState` per budget key in its partitioned,
on-disk state (RocksDB + changelog, next to the idempotency memory) and drives it with:

* :func:`charge` before a tool call: reserve the action in every budget that counts it, or
  refuse (a ``BLOCK`` budget it would exceed: nothing is reserved anywhere) — the reservation is
  written durably with the call's intent;
* :func:`settle` with the receipt: ``commit`` (the side effect happened, or may have) or
  ``release`` (it certainly did not: the tool answered an error), written with the terminal
  state of the key.

An execution counts at the time it was reserved. Reservations are idempotent per action id (a
replay after a crash reserves nothing twice) and committed spend is kept in at most
:data:`BUCKETS_PER_WINDOW` buckets per window, each stamped with its bucket's *end*, so the state
stays small and the window only errs on the safe side: a committed execution counts for up to
one bucket longer than the window, never shorter. A reservation never settled (its action lost)
ages out of the window like a committed one. Never over-spent: for every ``BLOCK`` budget, the
executions reserved and not released in any window of ``window_seconds`` stay within its caps
(property-tested in tests/unit/agents/test_budget_arithmetic.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from agents.globs import matches
from schemas.guardrail import GuardrailBudget, GuardrailPolicy

# Committed spend is summed into this many buckets per window (a 1 h window: 1 min buckets).
BUCKETS_PER_WINDOW = 60
MIN_BUCKET_MS = 1000
# A budget record's key in the executor state starts with this (no idempotency key does: those
# start with a tenant id), so state scans tell the two apart.
BUDGET_PREFIX = "\x1ebudget\x1f"

Settlement = Literal["commit", "release"]


@dataclass(frozen=True, slots=True)
class Limits:
    window_ms: int
    max_count: int | None = None
    max_value: float | None = None

    @property
    def bucket_ms(self) -> int:
        return max(MIN_BUCKET_MS, self.window_ms // BUCKETS_PER_WINDOW)


@dataclass(frozen=True, slots=True)
class BudgetState:
    """One budget key's spend in one state partition."""

    reserved: Mapping[str, tuple[int, float]] = field(default_factory=dict)  # id -> (at, amount)
    buckets: Mapping[int, tuple[int, float]] = field(default_factory=dict)  # end -> (n, sum)
    last_ms: int = 0  # the latest time seen: the window never moves backwards
    # rebuilt from the ledger's receipts (ledger/exec_restore.py), not written by an executor:
    # a worker that still has its own record merges this one into it (:func:`merge`)
    restored: bool = False

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "budget": 1,
            "reserved": {k: [at, v] for k, (at, v) in self.reserved.items()},
            "buckets": [[end, n, v] for end, (n, v) in sorted(self.buckets.items())],
            "last_ms": self.last_ms,
        }
        if self.restored:
            doc["restored"] = True
        return doc

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> BudgetState:
        return cls(
            reserved={str(k): (int(at), float(v)) for k, (at, v) in doc["reserved"].items()},
            buckets={int(end): (int(n), float(v)) for end, n, v in doc["buckets"]},
            last_ms=int(doc.get("last_ms") or 0),
            restored=bool(doc.get("restored")),
        )


EMPTY = BudgetState()


def _now(states: Sequence[BudgetState], now_ms: int) -> int:
    return max([now_ms, *(s.last_ms for s in states)])


def spent(state: BudgetState, now_ms: int, limits: Limits) -> tuple[int, float]:
    """(executions, summed value) that count in the window ending at ``now_ms``."""
    since = now_ms - limits.window_ms
    n, total = 0, 0.0
    for end, (c, v) in state.buckets.items():
        if end > since:
            n += c
            total += v
    for at, v in state.reserved.values():
        if at > since:
            n += 1
            total += v
    return n, total


def prune(state: BudgetState, now_ms: int, limits: Limits) -> BudgetState:
    """Drop what no longer counts (the window has slid past it)."""
    since = now_ms - limits.window_ms
    return BudgetState(
        reserved={k: r for k, r in state.reserved.items() if r[0] > since},
        buckets={end: b for end, b in state.buckets.items() if end > since},
        last_ms=max(state.last_ms, now_ms),
    )


def left(
    states: Sequence[BudgetState], now_ms: int, limits: Limits
) -> tuple[int, float, int | None, float | None]:
    """(spent count, spent value, count left, value left) over every partition's state."""
    now_ms = _now(states, now_ms)
    n, total = 0, 0.0
    for s in states:
        c, v = spent(s, now_ms, limits)
        n += c
        total += v
    count_left = None if limits.max_count is None else max(0, limits.max_count - n)
    value_left = None if limits.max_value is None else max(0.0, limits.max_value - total)
    return n, total, count_left, value_left


def fits(spent_count: int, spent_value: float, amount: float | None, limits: Limits) -> bool:
    """Would one more execution of ``amount`` stay within the caps? No amount against a value
    cap does not fit (as a guardrail ``max_value`` blocks an action with no value)."""
    if limits.max_count is not None and spent_count + 1 > limits.max_count:
        return False
    if limits.max_value is not None:
        if amount is None or spent_value + amount > limits.max_value:
            return False
    return True


def reserve(
    own: BudgetState,
    others: Sequence[BudgetState],
    action_id: str,
    amount: float | None,
    now_ms: int,
    limits: Limits,
    *,
    force: bool = False,
) -> tuple[BudgetState, bool]:
    """Reserve ``action_id`` in ``own`` (its partition's state) if it fits with everything the
    budget has spent (``own`` plus the ``others`` partitions' states). Idempotent: an action
    already reserved is granted again and nothing changes. ``force`` reserves even when it does
    not fit (an ``ALERT`` budget counts what it lets through)."""
    if action_id in own.reserved:
        return own, True
    now_ms = _now([own, *others], now_ms)
    n, total, _, _ = left([own, *others], now_ms, limits)
    ok = fits(n, total, amount, limits)
    if not ok and not force:
        return own, False
    pruned = prune(own, now_ms, limits)
    reserved = {**pruned.reserved, action_id: (now_ms, float(amount or 0.0))}
    return BudgetState(reserved, pruned.buckets, now_ms), ok


def commit(state: BudgetState, action_id: str, limits: Limits) -> BudgetState:
    """The side effect happened (or may have): the reservation becomes spend, in the bucket of
    its reservation time (stamped with the bucket's end). Unknown ids change nothing."""
    r = state.reserved.get(action_id)
    if r is None:
        return state
    at, v = r
    g = limits.bucket_ms
    end = (at // g + 1) * g
    n, total = state.buckets.get(end, (0, 0.0))
    reserved = {k: x for k, x in state.reserved.items() if k != action_id}
    return BudgetState(reserved, {**state.buckets, end: (n + 1, total + v)}, state.last_ms)


def rebuilt(spends: Iterable[tuple[int, float]], now_ms: int, limits: Limits) -> BudgetState:
    """The committed spend of stored executions ``(at_ms, amount)`` — what :func:`commit` would
    have left for them — as a ``restored`` state: the ledger's answer when a worker's disk and
    the broker's changelog are both gone (decisions §36). Executions still in flight at the
    crash have no receipt yet: their reservations live on the worker's disk or are lost with
    it (and are re-reserved when the orphaned intent is replayed)."""
    g = limits.bucket_ms
    buckets: dict[int, tuple[int, float]] = {}
    last = 0
    for at, v in spends:
        end = (at // g + 1) * g
        n, total = buckets.get(end, (0, 0.0))
        buckets[end] = (n + 1, total + float(v))
        last = max(last, at)
    state = prune(BudgetState({}, buckets, last), max(now_ms, last), limits)
    return BudgetState(state.reserved, state.buckets, state.last_ms, restored=True)


def merge(local: BudgetState, restored: BudgetState) -> BudgetState:
    """A worker's own record with a :func:`rebuilt` one for the same key: per bucket the larger
    count and sum (both describe the same executions; neither is ever below the truth it saw),
    the worker's reservations kept. Never under-counts; it can over-count an execution whose
    reservation the worker still holds while its receipt is already stored — the safe side."""
    ends = set(local.buckets) | set(restored.buckets)
    buckets = {}
    for end in ends:
        a = local.buckets.get(end, (0, 0.0))
        b = restored.buckets.get(end, (0, 0.0))
        buckets[end] = (max(a[0], b[0]), max(a[1], b[1]))
    return BudgetState(local.reserved, buckets, max(local.last_ms, restored.last_ms))


def release(state: BudgetState, action_id: str) -> BudgetState:
    """The side effect certainly did not happen: the reservation is given back."""
    if action_id not in state.reserved:
        return state
    reserved = {k: x for k, x in state.reserved.items() if k != action_id}
    return BudgetState(reserved, state.buckets, state.last_ms)


def settlement(outcome: str, error_code: str | None) -> Settlement:
    """What a receipt means for the reservation: only a tool's definite error releases it; an
    unknown outcome (timeout, crash, executor error) may have spent, so it is committed."""
    if outcome == "failed" and error_code not in (
        None,
        "timeout",
        "connector_crashed",
        "outcome_unknown",
        "executor_error",
    ):
        return "release"
    return "commit"


# ---- which budgets count an action -------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Counted:
    """One budget that counts an action, under the scope values of that action."""

    policy: GuardrailPolicy
    index: int
    budget: GuardrailBudget
    key: str  # the state key (BUDGET_PREFIX + tenant, mode, policy, index, scope values)
    scope: dict[str, str]
    limits: Limits

    @property
    def spans_entities(self) -> bool:
        """Summed over every state partition (its actions live on many), or only the one of
        its entity."""
        return "entity" not in self.budget.per

    def rule(self) -> dict[str, Any]:
        """How a verdict cites the budget (``rule`` on the receipt)."""
        return {
            "rule": "budget_exhausted",
            "guardrail_id": self.policy.id,
            "guardrail": self.policy.name,
            "guardrail_version": self.policy.version,
            "budget": self.index,
            "scope": dict(self.scope),
            **self.budget.public(),
        }


def _glob_ok(pattern: str | None, *names: str | None) -> bool:
    return pattern is None or any(n is not None and matches(pattern, n) for n in names)


def counting(
    policies: Sequence[GuardrailPolicy],
    *,
    tenant_id: str,
    livemode: bool,
    operator_id: str,
    operator_name: str,
    connector_id: str,
    connector_names: Sequence[str],
    tool: str,
    entity_key: str,
) -> list[Counted]:
    """The budgets of the tenant's active policies that count this side effect. A budget's key
    names its policy and position, so editing a policy keeps what its budgets have spent."""
    values = {
        "operator": operator_id,
        "connector": connector_id,
        "tool": tool,
        "entity": entity_key,
    }
    out = []
    for p in policies:
        if p.status != "active" or p.deleted:
            continue
        for i, b in enumerate(p.budgets):
            if not (
                _glob_ok(b.operator, operator_name)
                and _glob_ok(b.connector, *connector_names)
                and _glob_ok(b.tool, tool)
            ):
                continue
            scope: dict[str, str] = {k: values[k] for k in sorted(b.per)}
            key = "\x1f".join(
                [
                    tenant_id,
                    str(int(livemode)),
                    p.id,
                    str(i),
                    *(f"{k}={v}" for k, v in scope.items()),
                ]
            )
            limits = Limits(b.window_seconds * 1000, b.max_count, b.max_value)
            out.append(Counted(p, i, b, BUDGET_PREFIX + key, scope, limits))
    return out


@dataclass(frozen=True, slots=True)
class Charge:
    """What :func:`charge` decided: ``refused`` (a BLOCK budget is exhausted; nothing was
    reserved), else the new states to write and the ALERT budgets it went over."""

    updates: dict[str, BudgetState]
    refused: Counted | None = None
    over: tuple[Counted, ...] = ()


def charge(
    action_id: str,
    amount: float | None,
    counted: Sequence[Counted],
    own: Mapping[str, BudgetState],
    others: Mapping[str, Sequence[BudgetState]],
    now_ms: int,
) -> Charge:
    """Reserve one action in every budget in ``counted`` or in none: the first ``BLOCK`` budget
    it would exceed refuses it; an ``ALERT`` budget it would exceed still reserves (the action
    runs, its receipt says ALERT ``budget_exhausted``). ``own``: each key's state in the
    action's partition; ``others``: the key's states in the other partitions."""
    updates: dict[str, BudgetState] = {}
    over: list[Counted] = []
    for c in counted:
        mine = updates.get(c.key, own.get(c.key, EMPTY))
        new, ok = reserve(
            mine,
            others.get(c.key, ()),
            action_id,
            amount,
            now_ms,
            c.limits,
            force=c.budget.on_exhausted == "ALERT",
        )
        if not ok and c.budget.on_exhausted == "BLOCK":
            return Charge({}, refused=c)
        if not ok:
            over.append(c)
        updates[c.key] = new
    return Charge(updates, over=tuple(over))


def exhausted_reason(c: Counted, tool: str, amount: float | None) -> str:
    b = c.budget
    caps = []
    if b.max_count is not None:
        caps.append(f"{b.max_count} executions")
    if b.max_value is not None:
        caps.append(f"a value of {b.max_value:g}")
    what = " and ".join(caps)
    novalue = " (the action has no value)" if b.max_value is not None and amount is None else ""
    return (
        f"budget_exhausted: {tool} is over budget {c.index} of tenant guardrail "
        f"{c.policy.name!r} v{c.policy.version} ({what} per {b.window_seconds} s){novalue}"
    )
