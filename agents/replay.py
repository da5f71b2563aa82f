"""Policy replay (issue 12 item 4, decisions §37): re-judge stored actions under a candidate
guardrail set and count the verdicts that would flip. Pure: no I/O here.

The judge is the executor's own (:func:`agents.executor.judge`, which ``vet`` calls for every
plan, approval and undo); a replay only changes its inputs: the tenant policies are the candidate
set, judged with every rule enforced (``include_shadow``: a shadow rule is replayed as if it were
enforced, which is the question a replay answers), and the operator's guardrails are those of the
version that judged the stored action (``guardrail_version``), so a flip is the candidate's doing,
not a later operator change. The baseline is the stored verdict (the first non-DEDUP receipt of
each action). The ledger groups stored actions with identical judge inputs
(:class:`StoredVerdicts`), and the replayer judges each distinct input once.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from agents.executor import judge
from schemas.connector import Connector
from schemas.guardrail import GuardrailPolicy
from schemas.operator import Operator

VERDICTS = ("ALLOW", "ALERT", "BLOCK")
# Example plan ids kept per operator, tool and transition.
MAX_EXAMPLES = 3


@dataclass(frozen=True, slots=True)
class StoredVerdicts:
    """``count`` stored actions that were judged with the same inputs and got ``decision``."""

    operator_id: str
    guardrail_version: int
    connector_id: str | None
    connector_name: str | None
    tool: str
    value: float | None
    decision: str
    count: int
    examples: Sequence[str] = ()  # plan ids


@dataclass(slots=True)
class _Line:
    operator_id: str
    operator: str
    tool: str
    judged: int = 0
    flipped: int = 0
    transitions: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)


def thresholds(candidate: Sequence[GuardrailPolicy], operators: Iterable[Operator]) -> list[float]:
    """Every ``max_value`` the judge may compare an action's value with (the candidate's rules
    and every operator version's guardrails). Two values with the same count of thresholds
    below them get the same decision, so the ledger groups stored actions by that count."""
    out = {r.max_value for p in candidate for r in p.rules if r.max_value is not None}
    out |= {g.max_value for op in operators for g in op.guardrails if g.max_value is not None}
    return sorted(out)


def transition(before: str, after: str) -> str:
    return f"{before}->{after}"


class Replayer:
    """Feed it stored verdicts (:meth:`feed`, any number of times), then read :meth:`result`.

    ``operators``: every stored version of the tenant's operators, by ``(id, version)``;
    ``current``: the operators as they are now (by id; used when a version is missing from the
    config history, counted in ``operator_version_missing``); ``connectors``: the tenant's
    connectors by id (their names, listing and tool catalogue: a tool no catalogue lists any more
    is judged as a side effect, the default-closed reading)."""

    def __init__(
        self,
        candidate: Sequence[GuardrailPolicy],
        operators: Mapping[tuple[str, int], Operator],
        current: Mapping[str, Operator],
        connectors: Mapping[str, Connector],
    ) -> None:
        self.candidate = list(candidate)
        self.operators = operators
        self.current = current
        self.connectors = connectors
        self.lines: dict[tuple[str, str], _Line] = {}
        self.judged = 0
        self.distinct = 0
        self.skipped = 0
        self.operator_version_missing = 0
        self._memo: dict[tuple[Any, ...], str] = {}

    def _operator(self, row: StoredVerdicts) -> Operator | None:
        op = self.operators.get((row.operator_id, row.guardrail_version))
        if op is None:
            op = self.current.get(row.operator_id)
            if op is not None:
                self.operator_version_missing += row.count
        return op

    def verdict(self, op: Operator, row: StoredVerdicts) -> str:
        """The candidate's decision for ``row``, judged with ``op``'s guardrails."""
        cn = self.connectors.get(row.connector_id or "")
        if cn is not None:
            names: tuple[str, ...] = (cn.id, cn.name, cn.listing)
            tool = next((t for t in cn.tools if t.name == row.tool), None)
            side_effect = tool.side_effect if tool is not None else True
        else:
            names = tuple(n for n in (row.connector_id, row.connector_name) if n)
            side_effect = True
        key = (op.id, op.version, names, row.tool, side_effect, row.value)
        decision = self._memo.get(key)
        if decision is None:
            self.distinct += 1
            decision = judge(
                op.guardrails,
                self.candidate,
                operator_name=op.name,
                tool=row.tool,
                side_effect=side_effect,
                value=row.value,
                connector_names=names,
                include_shadow=True,
            ).decision
            self._memo[key] = decision
        return decision

    def feed(self, rows: Iterable[StoredVerdicts]) -> None:
        for row in rows:
            op = self._operator(row) if row.decision in VERDICTS else None
            if op is None:  # an operator the config history does not know, or no verdict
                self.skipped += row.count
                continue
            after = self.verdict(op, row)
            line = self.lines.get((row.operator_id, row.tool))
            if line is None:
                line = self.lines[(row.operator_id, row.tool)] = _Line(
                    row.operator_id, op.name, row.tool
                )
            line.judged += row.count
            self.judged += row.count
            t = transition(row.decision, after)
            line.transitions[t] = line.transitions.get(t, 0) + row.count
            if row.decision != after:
                line.flipped += row.count
                ex = line.examples.setdefault(t, [])
                for plan_id in row.examples:
                    if len(ex) >= MAX_EXAMPLES:
                        break
                    if plan_id not in ex:
                        ex.append(plan_id)

    def result(self) -> dict[str, Any]:
        """The report: totals, flips by transition, and one line per operator and tool (most
        flips first), each with its transition counts (unchanged ones too, ``ALLOW->ALLOW``) and
        up to three example plan ids per flip."""
        flips: dict[str, int] = {}
        for line in self.lines.values():
            for t, n in line.transitions.items():
                before, after = t.split("->")
                if before != after:
                    flips[t] = flips.get(t, 0) + n
        lines = sorted(self.lines.values(), key=lambda x: (-x.flipped, x.operator, x.tool))
        return {
            "judged": self.judged,
            "flipped": sum(flips.values()),
            "skipped": self.skipped,
            "distinct_inputs": self.distinct,
            "operator_version_missing": self.operator_version_missing,
            "flips": dict(sorted(flips.items())),
            "results": [
                {
                    "operator_id": x.operator_id,
                    "operator": x.operator,
                    "tool": x.tool,
                    "judged": x.judged,
                    "flipped": x.flipped,
                    "transitions": dict(sorted(x.transitions.items())),
                    "examples": {t: list(v) for t, v in sorted(x.examples.items())},
                }
                for x in lines
            ],
        }


def csv_rows(result: Mapping[str, Any]) -> list[list[Any]]:
    """The result flattened for CSV: one row per operator, tool and transition (header first)."""
    out: list[list[Any]] = [
        ["operator_id", "operator", "tool", "from", "to", "count", "example_plan_ids"]
    ]
    for line in result.get("results") or []:
        for t, n in line["transitions"].items():
            before, after = t.split("->")
            examples = " ".join(line["examples"].get(t, []))
            out.append(
                [line["operator_id"], line["operator"], line["tool"], before, after, n, examples]
            )
    return out
