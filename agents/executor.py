"""The deterministic executor's core: pure, no I/O (no Faust, Kafka, ClickHouse or MCP here).

This is the only place that judges an action against policy (:func:`judge` over the operator's
guardrails and the tenant's guardrail policies; :func:`vet`, used by the plan builder, approval,
undo and the api's dry-run evaluate), builds receipts (:func:`receipt`, :func:`plan_receipt`), builds
undo actions (:func:`undo_action`) and decides what happens to an action that reaches the
executor (:func:`decide` before a tool call, :func:`conclude` after it). The worker's executor
(``streams/executor.py``) only does the I/O around these functions: it reads the seen-state of a
batch's keys, runs each entity's actions one at a time, writes intents before calling a tool and
results after, and produces what these functions return.

:func:`simulate` composes the same functions over a whole batch with given tool results; the
unit and property tests drive it, and policy replay can too.

Seen-state per idempotency key (scoped tenant + mode + entity, see docs/decisions.md §11):

* ``intent``  — a tool call was started and its outcome is not known yet;
* ``done``    — the call succeeded; the state keeps the result and the receipt that proves it;
* ``failed``  — the call failed (the key may be tried again by a later action).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from agents.budget import BudgetState
from agents.globs import matches
from agents.policy import evaluate
from schemas.connector import Connector
from schemas.guardrail import GuardrailPolicy, GuardrailRule
from schemas.ids import derived_id
from schemas.operator import Guardrail, Operator
from schemas.plan import ActionRecord, Outcome, Plan, Receipt, Verdict
from schemas.tracing import trace_id_of

# Connector errors after which the side effect may or may not have happened upstream.
UNKNOWN_OUTCOME = frozenset({"timeout", "connector_crashed"})
# Receipts kept per key for replays. A replay only covers a batch that was not committed, and
# one key sees more than one non-DEDUP disposition only when calls fail and are retried, so a
# handful is plenty; the bound keeps a hot key's state small.
MAX_KEY_RECEIPTS = 16

KeyStatus = Literal["intent", "done", "failed"]


def key_of(tenant_id: str, livemode: bool, entity_key: str, idempotency_key: str) -> str:
    """The seen-state key: tenant, mode, entity and idempotency key."""
    return f"{tenant_id}\x1f{int(livemode)}\x1f{entity_key}\x1f{idempotency_key}"


def state_key(a: ActionRecord) -> str:
    return key_of(a.tenant_id, a.livemode, a.entity_key, a.idempotency_key)


@dataclass(frozen=True, slots=True)
class KeyState:
    """What the executor remembers about one idempotency key."""

    action_id: str
    status: KeyStatus
    at_ms: int
    result: Any = None
    error: str | None = None
    # the receipts of the key's recent non-DEDUP dispositions (action id -> receipt JSON): a
    # replayed action re-emits its own receipt (same id, stored once) instead of being judged
    # again, so a crash between "state written" and "receipt acknowledged" never loses a
    # receipt and never gives one action two outcomes
    receipts: Mapping[str, dict[str, Any]] = field(default_factory=dict)
    # an intent carries its action: if the broker loses the actions topic while the call was
    # in flight, the worker can still conclude it (re-invoke with the same key, or dispose it
    # outcome_unknown) instead of leaving a side effect without its receipt
    action: dict[str, Any] | None = None

    @property
    def receipt(self) -> dict[str, Any] | None:
        return self.receipts.get(self.action_id)

    def to_json(self) -> dict[str, Any]:
        return {
            "action_id": self.action_id,
            "state": self.status,
            "at_ms": self.at_ms,
            "result": self.result,
            "error": self.error,
            "receipts": dict(self.receipts),
            "action": self.action,
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> KeyState:
        return cls(
            action_id=str(doc["action_id"]),
            status=doc["state"],
            at_ms=int(doc.get("at_ms") or 0),
            result=doc.get("result"),
            error=doc.get("error"),
            receipts=doc.get("receipts") or {},
            action=doc.get("action"),
        )


@dataclass(frozen=True, slots=True)
class CallResult:
    """What a connector tool call returned (the MCP pool's answer, reduced to data)."""

    ok: bool
    content: Any = None
    error_code: str | None = None
    error_message: str | None = None
    upstream_status: int | None = None
    latency_ms: float | None = None


# What the executor's state holds per key: an idempotency key's state, or a budget's spend
# (agents/budget.py; its keys start with BUDGET_PREFIX).
StateRecord = KeyState | BudgetState


# ---- decisions -------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Dispose:
    """A terminal disposition: emit ``receipt``; write ``state`` for the key when not None."""

    receipt: Receipt
    state: KeyState | None = None


@dataclass(frozen=True, slots=True)
class Reemit:
    """This very action was disposed before (a replay after a crash): emit its stored receipt
    again (same id, the ledger stores it once); nothing runs."""

    receipt: dict[str, Any] | None  # None: the state was restored from the ledger, which has it


@dataclass(frozen=True, slots=True)
class Invoke:
    """Call the tool. For a side effect, ``intent`` is written durably first."""

    intent: KeyState | None


Decision = Dispose | Reemit | Invoke


def _ms(dt: datetime) -> int:
    return int(dt.timestamp() * 1000)


def decide(
    a: ActionRecord,
    seen: KeyState | None,
    now: datetime,
    *,
    connector_problem: str | None = None,
    reinvoke_safe: bool = True,
) -> Decision:
    """What to do with ``a`` given what is known about its key (``seen``).

    ``connector_problem``: why the bound connector cannot be used now (None when it can).
    ``reinvoke_safe``: the connector deduplicates on the idempotency key, so an intent whose
    outcome is unknown (a crash mid-call) may be invoked again with the same key.
    """
    if a.verdict.decision == "BLOCK":
        return Dispose(receipt(a, "BLOCK", "refused", a.verdict.reason, now))
    if a.side_effect and seen is not None:
        if a.id in seen.receipts:
            return Reemit(seen.receipts[a.id])
        if seen.action_id == a.id and seen.status in ("done", "failed"):
            return Reemit(None)
        if seen.status == "done":
            return Dispose(
                receipt(
                    a,
                    "DEDUP",
                    "deduplicated",
                    f"idempotency_key {a.idempotency_key!r} already applied by {seen.action_id}",
                    now,
                    result=seen.result,
                )
            )
        if seen.status == "intent" and not reinvoke_safe:
            # a call was started and never concluded; running it blindly again could repeat
            # the side effect, so a human decides (ARCHITECTURE §6, crash safety)
            rc = receipt(
                a,
                a.verdict.decision,
                "failed",
                "outcome_unknown",
                now,
                error={"code": "outcome_unknown", "interrupted_action": seen.action_id},
            )
            return Dispose(rc, _terminal(a, "failed", now, rc, seen, error="outcome_unknown"))
    if connector_problem:
        rc = receipt(
            a,
            a.verdict.decision,
            "failed",
            connector_problem,
            now,
            error={"code": "connector_unavailable"},
        )
        return Dispose(rc, _terminal(a, "failed", now, rc, seen, error="connector_unavailable"))
    if not a.side_effect:
        return Invoke(None)
    prior = seen.receipts if seen is not None else {}
    return Invoke(
        KeyState(
            action_id=a.id,
            status="intent",
            at_ms=_ms(now),
            receipts=prior,
            action=a.model_dump(mode="json"),
        )
    )


def conclude(
    a: ActionRecord, res: CallResult, now: datetime, intent: KeyState | None = None
) -> Dispose:
    """The disposition of an invoked action from the tool's answer (``intent``: the state
    :func:`decide` returned for it, whose receipt history carries over)."""
    if res.ok:
        rc = receipt(
            a,
            a.verdict.decision,
            "undone" if a.undo_of else "applied",
            a.verdict.reason,
            now,
            result=res.content,
            latency_ms=res.latency_ms,
        )
        return Dispose(rc, _terminal(a, "done", now, rc, intent, result=res.content))
    reason = (
        "outcome_unknown"
        if res.error_code in UNKNOWN_OUTCOME
        else f"connector error: {res.error_code}"
    )
    rc = receipt(
        a,
        a.verdict.decision,
        "failed",
        reason,
        now,
        latency_ms=res.latency_ms,
        error={
            "code": res.error_code,
            "message": res.error_message,
            "upstream_status": res.upstream_status,
        },
    )
    return Dispose(rc, _terminal(a, "failed", now, rc, intent, error=res.error_code))


def over_budget(
    a: ActionRecord, verdict: Verdict, now: datetime, prior: KeyState | None = None
) -> Dispose:
    """The disposition of a side effect a ``BLOCK`` budget refuses at the executor (decisions
    §36): refused, citing the budget. The key's state keeps the receipt, so a replay of this
    action re-emits it rather than being judged again (one action, one outcome); the key stays
    free for a later action (status ``failed``)."""
    judged = a.model_copy(update={"verdict": verdict})
    rc = receipt(judged, verdict.decision, "refused", verdict.reason, now)
    return Dispose(rc, _terminal(a, "failed", now, rc, prior, error="budget_exhausted"))


def crashed(
    a: ActionRecord, error: BaseException, now: datetime, prior: KeyState | None = None
) -> Dispose:
    """The disposition when the executor itself failed on ``a`` (a bug, never a refusal)."""
    rc = receipt(
        a,
        a.verdict.decision,
        "failed",
        f"executor error: {type(error).__name__}",
        now,
        error={"code": "executor_error"},
    )
    return Dispose(rc, _terminal(a, "failed", now, rc, prior, error="executor_error"))


def _terminal(
    a: ActionRecord,
    status: KeyStatus,
    now: datetime,
    rc: Receipt,
    prior: KeyState | None,
    *,
    result: Any = None,
    error: str | None = None,
) -> KeyState | None:
    if not a.side_effect:
        return None
    receipts = dict(prior.receipts) if prior is not None else {}
    receipts.pop(a.id, None)
    receipts[a.id] = rc.model_dump(mode="json")
    while len(receipts) > MAX_KEY_RECEIPTS:
        receipts.pop(next(iter(receipts)))
    return KeyState(
        action_id=a.id,
        status=status,
        at_ms=_ms(now),
        result=result,
        error=error,
        receipts=receipts,
    )


# ---- policy (the one place an action is judged) -------------------------------------------------
def _tenant_rule(p: GuardrailPolicy, index: int, r: GuardrailRule) -> dict[str, Any]:
    """How a verdict cites a tenant rule: the policy (id, name, exact version) and the rule."""
    return {
        "guardrail_id": p.id,
        "guardrail": p.name,
        "guardrail_version": p.version,
        "index": index,
        **r.public(),
    }


def _glob_ok(pattern: str | None, *names: str | None) -> bool:
    return pattern is None or any(n is not None and matches(pattern, n) for n in names)


def is_shadow(p: GuardrailPolicy, r: GuardrailRule) -> bool:
    """A rule is shadow when it or its policy is (decisions §37)."""
    return p.mode == "shadow" or r.mode == "shadow"


def judge(
    guardrails: Sequence[Guardrail],
    policies: Sequence[GuardrailPolicy],
    *,
    operator_name: str,
    tool: str,
    side_effect: bool,
    value: float | None,
    connector_names: Sequence[str] = (),
    include_shadow: bool = False,
) -> Verdict:
    """One action against the operator's ``guardrails`` and the tenant's ``policies``
    (decisions §35). Pure. Precedence, first that applies:

    1. a matching tenant ``BLOCK`` rule → BLOCK (also for read-only tools: it always wins);
    2. read-only tool → ALLOW (reads are not gated otherwise, spec §4.1);
    3. a matching tenant rule whose ``max_value`` the action exceeds (or has no value for) → BLOCK;
    4. the operator's guardrails (agents/policy.py) BLOCK on a ceiling → BLOCK;
    5. the union of matching rules (operator's and tenant's): any ALERT → ALERT, else any ALLOW
       → ALLOW, else BLOCK (default closed).

    With no matching tenant rule the verdict is exactly the operator guardrails' verdict.

    Shadow rules (:func:`is_shadow`) take no part unless ``include_shadow``: then every rule
    judges as if enforced (the shadow verdict, and policy replay's candidate verdict)."""
    matching = [
        (p, i, r)
        for p in policies
        if p.status == "active" and not p.deleted
        for i, r in enumerate(p.rules)
        if (include_shadow or not is_shadow(p, r))
        and _glob_ok(r.operator, operator_name)
        and _glob_ok(r.connector, *connector_names)
        and _glob_ok(r.tool, tool)
    ]
    for p, i, r in matching:
        if r.decision == "BLOCK":
            why = f"{tool} is blocked by tenant guardrail {p.name!r} v{p.version}"
            return Verdict(decision="BLOCK", rule=_tenant_rule(p, i, r), reason=why)
    own = evaluate(
        guardrails,
        tool=tool,
        side_effect=side_effect,
        value=value,
        connector_names=connector_names,
    )
    if not matching or not side_effect:
        return own
    for p, i, r in matching:
        if r.max_value is not None and (value is None or value > r.max_value):
            why = (
                "has no value"
                if value is None
                else f"value {value:g} exceeds max_value {r.max_value:g}"
            )
            return Verdict(
                decision="BLOCK",
                rule=_tenant_rule(p, i, r),
                reason=f"{tool} {why} (tenant guardrail {p.name!r} v{p.version})",
            )
    if own.decision == "BLOCK" and own.rule is not None:
        return own  # the operator's own ceiling failed
    if own.decision == "ALERT":
        return own
    alert = next(((p, i, r) for p, i, r in matching if r.decision == "ALERT"), None)
    if alert is not None:
        p, i, r = alert
        return Verdict(
            decision="ALERT",
            rule=_tenant_rule(p, i, r),
            reason=f"{tool} requires human approval (tenant guardrail {p.name!r} v{p.version})",
        )
    if own.decision == "ALLOW":
        return own
    p, i, r = matching[0]  # every matching tenant rule here is an ALLOW
    return Verdict(
        decision="ALLOW",
        rule=_tenant_rule(p, i, r),
        reason=f"{tool} allowed by tenant guardrail {p.name!r} v{p.version}",
    )


def vet(
    operator: Operator | None,
    connector: Connector | None,
    *,
    tool: str,
    side_effect: bool,
    value: float | None,
    policies: Sequence[GuardrailPolicy] = (),
) -> Verdict:
    """Judge one action with ``operator``'s guardrails and the tenant's ``policies`` in force
    now. A deleted operator or an uninstalled connector blocks (default closed)."""
    if operator is None:
        return Verdict(decision="BLOCK", rule=None, reason="the operator no longer exists")
    cited = policy_versions(operator, policies)
    if connector is None:
        return Verdict(
            decision="BLOCK",
            rule=None,
            reason="the connector is no longer installed",
            policy_versions=cited,
        )
    args: dict[str, Any] = {
        "operator_name": operator.name,
        "tool": tool,
        "side_effect": side_effect,
        "value": value,
        "connector_names": (connector.id, connector.name, connector.listing),
    }
    v = judge(operator.guardrails, policies, **args)
    v.policy_versions = cited
    if any(is_shadow(p, r) for p in in_force(policies) for r in p.rules):
        v.shadow_verdict = shadow_of(
            v, judge(operator.guardrails, policies, **args, include_shadow=True)
        )
    return v


def in_force(policies: Sequence[GuardrailPolicy]) -> list[GuardrailPolicy]:
    """The tenant policies that judge (active, not deleted), shadow ones included."""
    return [p for p in policies if p.status == "active" and not p.deleted]


def policy_versions(
    operator: Operator, policies: Sequence[GuardrailPolicy]
) -> list[dict[str, Any]]:
    """Every policy version that judges an action of ``operator`` now: the operator's guardrails
    (its version) and each tenant policy in force, ``id@version`` with its mode."""
    own = {"kind": "operator", "id": operator.id, "name": operator.name}
    return [{**own, "version": operator.version}, *(p.citation() for p in in_force(policies))]


def shadow_of(enforced: Verdict, shadow: Verdict) -> dict[str, Any]:
    """The receipt's ``shadow_verdict``: the would-be verdict with shadow rules enforced."""
    return {
        "decision": shadow.decision,
        "rule": shadow.rule,
        "reason": shadow.reason,
        "differs": shadow.decision != enforced.decision,
    }


def revet(
    a: ActionRecord,
    operator: Operator | None,
    connectors: Sequence[Connector],
    policies: Sequence[GuardrailPolicy] = (),
) -> Verdict:
    """Judge an already planned action again (approval time)."""
    cn = next((c for c in connectors if c.id == a.connector_id), None)
    return vet(
        operator, cn, tool=a.tool, side_effect=a.side_effect, value=a.value, policies=policies
    )


def undo_action(
    original: ActionRecord,
    operator: Operator | None,
    connectors: Sequence[Connector],
    now: datetime,
    request_id: str | None,
    policies: Sequence[GuardrailPolicy] = (),
) -> ActionRecord:
    """The compensating action of ``original``: itself governed (vetted now, single-flight on the
    same entity, idempotency key ``<original>:undo`` so a repeated undo is DEDUP)."""
    cn = next((c for c in connectors if c.id == original.connector_id), None)
    tool = next((t for t in cn.tools if t.name == original.compensating_tool), None) if cn else None
    undo = original.model_copy(
        update={
            "id": derived_id("act", _ms(now), original.id, "undo"),
            "tool": original.compensating_tool,
            "compensating_tool": None,
            "undo_of": original.id,
            "idempotency_key": f"{original.idempotency_key}:undo",
            "side_effect": True,
            "request_id": request_id,
            "approver": None,
            "proposed_at": now,
            "guardrail_version": operator.version if operator else original.guardrail_version,
        }
    )
    if tool is None:
        undo.verdict = Verdict(
            decision="BLOCK",
            rule=None,
            reason="the operator or connector needed for the undo is gone",
        )
    else:
        undo.verdict = vet(
            operator, cn, tool=undo.tool, side_effect=True, value=undo.value, policies=policies
        )
    return undo


# ---- receipts --------------------------------------------------------------------------------
def receipt(
    a: ActionRecord,
    decision: str,
    outcome: Outcome,
    reason: str,
    now: datetime,
    *,
    result: Any = None,
    error: dict[str, Any] | None = None,
    latency_ms: float | None = None,
    approver: str | None = None,
    request_id: str | None = None,
) -> Receipt:
    """The receipt of one disposition; its id is derived from the action and the outcome, so a
    replayed disposition produces the same receipt id (stored once)."""
    return Receipt(
        id=derived_id("rc", _ms(a.proposed_at), a.id, outcome),
        tenant_id=a.tenant_id,
        livemode=a.livemode,
        operator_id=a.operator_id,
        operator_name=a.operator_name,
        guardrail_version=a.guardrail_version,
        event_id=a.event_id,
        plan_id=a.plan_id,
        action_id=a.id,
        correlation_id=a.correlation_id,
        connector_id=a.connector_id,
        connector_name=a.connector_name,
        tool=a.tool,
        entity_key=a.entity_key,
        idempotency_key=a.idempotency_key,
        value=a.value,
        decision=decision,  # type: ignore[arg-type]
        outcome=outcome,
        rule=a.verdict.rule,
        reason=reason,
        result=result,
        error=error,
        approver=approver or a.approver,
        request_id=request_id or a.request_id,
        latency_ms=latency_ms,
        proposed_at=a.proposed_at,
        created_at=now,
        policy_versions=a.verdict.policy_versions,
        shadow_verdict=a.verdict.shadow_verdict,
        trace_id=trace_id_of(a.traceparent),
    )


def plan_receipt(plan: Plan, reason: str, now: datetime, traceparent: str | None = None) -> Receipt:
    """The receipt of a plan refused as a whole (invalid proposal, unknown tool, no connector)."""
    return Receipt(
        id=derived_id("rc", _ms(plan.created_at), plan.id, "plan-refused"),
        tenant_id=plan.tenant_id,
        livemode=plan.livemode,
        operator_id=plan.operator_id,
        operator_name=plan.operator_name,
        guardrail_version=plan.guardrail_version,
        event_id=plan.event_id,
        plan_id=plan.id,
        action_id=None,
        correlation_id=plan.correlation_id,
        connector_id=None,
        connector_name=None,
        tool=None,
        entity_key=None,
        idempotency_key=None,
        value=None,
        decision="BLOCK",
        outcome="refused",
        rule=None,
        reason=f"plan refused: {reason}",
        created_at=now,
        policy_versions=[
            {
                "kind": "operator",
                "id": plan.operator_id,
                "name": plan.operator_name,
                "version": plan.guardrail_version,
            }
        ],
        trace_id=trace_id_of(traceparent),
    )


# ---- a whole batch, for tests and replay ---------------------------------------------------------
def lane_of(a: ActionRecord) -> tuple[str, bool, str]:
    """Actions of one lane run one at a time, in arrival order (single-flight per entity)."""
    return (a.tenant_id, a.livemode, a.entity_key)


def lanes(batch: Sequence[ActionRecord]) -> dict[tuple[str, bool, str], list[ActionRecord]]:
    out: dict[tuple[str, bool, str], list[ActionRecord]] = defaultdict(list)
    for a in batch:
        out[lane_of(a)].append(a)
    return out


@dataclass
class BatchResult:
    receipts: list[dict[str, Any]] = field(default_factory=list)  # in emission order
    states: dict[str, KeyState] = field(default_factory=dict)  # the batch's state changes
    invoked: list[str] = field(default_factory=list)  # action ids whose tool was called


def simulate(
    batch: Sequence[ActionRecord],
    seen: Mapping[str, KeyState],
    results: Mapping[str, CallResult],
    now: datetime,
    *,
    connector_problems: Mapping[str, str] | None = None,
    reinvoke_safe: bool = True,
) -> BatchResult:
    """Dispose a batch as the executor does, with the tool results given up front (an action
    with no entry in ``results`` succeeds with no content). Pure: same input, same output."""
    out = BatchResult()
    state = dict(seen)
    problems = connector_problems or {}
    for lane in lanes(batch).values():
        for a in lane:
            key = state_key(a)
            d = decide(
                a,
                state.get(key) if a.side_effect else None,
                now,
                connector_problem=problems.get(a.connector_id or ""),
                reinvoke_safe=reinvoke_safe,
            )
            if isinstance(d, Reemit):
                if d.receipt is not None:
                    out.receipts.append(d.receipt)
                continue
            if isinstance(d, Invoke):
                if d.intent is not None:
                    state[key] = out.states[key] = d.intent
                out.invoked.append(a.id)
                d = conclude(a, results.get(a.id, CallResult(ok=True)), now, d.intent)
            out.receipts.append(d.receipt.model_dump(mode="json"))
            if d.state is not None:
                state[key] = out.states[key] = d.state
    return out
