"""Trust-policy evaluation (ARCHITECTURE §6): pure, deterministic, default-closed.

A rule matches when its ``connector`` and ``tool`` matchers are absent or equal. For a
side-effecting tool: no matching rule → BLOCK; any matching rule with a ``max_value`` ceiling that
the action exceeds (or has no ``value`` for) → BLOCK; else any matching ALERT → ALERT; else ALLOW.
Precedence BLOCK > ALERT > ALLOW; rule order does not matter. Read-only tools are allowed.
"""

from __future__ import annotations

from collections.abc import Sequence

from schemas.operator import Guardrail
from schemas.plan import Verdict


def _rule(index: int, g: Guardrail) -> dict:
    return {"index": index, **g.public()}


def evaluate(
    guardrails: Sequence[Guardrail],
    *,
    tool: str,
    side_effect: bool,
    value: float | None,
    connector_names: Sequence[str] = (),
) -> Verdict:
    if not side_effect:
        return Verdict(decision="ALLOW", rule=None, reason="read-only tool")
    matching = [
        (i, g)
        for i, g in enumerate(guardrails)
        if (g.connector is None or g.connector in connector_names)
        and (g.tool is None or g.tool == tool)
    ]
    if not matching:
        return Verdict(
            decision="BLOCK", rule=None, reason=f"no guardrail allows {tool} (default closed)"
        )
    for i, g in matching:
        if g.max_value is not None and (value is None or value > g.max_value):
            why = (
                "has no value"
                if value is None
                else f"value {value:g} exceeds max_value {g.max_value:g}"
            )
            return Verdict(decision="BLOCK", rule=_rule(i, g), reason=f"{tool} {why}")
    alerts = [(i, g) for i, g in matching if g.decision == "ALERT"]
    if alerts:
        i, g = alerts[0]
        return Verdict(decision="ALERT", rule=_rule(i, g), reason=f"{tool} requires human approval")
    i, g = matching[0]
    return Verdict(decision="ALLOW", rule=_rule(i, g), reason=f"{tool} allowed by guardrail {i}")
