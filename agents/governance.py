"""Pure governance logic (issue 12 items 5 and 7): field-level diffs between config versions,
what a rollback restores, how a config record reads in the audit trail, and the arithmetic of
the governance report over the rows ClickHouse aggregated. No I/O here."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from agents.globs import matches
from schemas.guardrail import GuardrailPolicy

# The fields a version diff compares: an object's configuration, not its bookkeeping (ids,
# timestamps, the version itself, the last run's counters).
OPERATOR_DIFF_FIELDS = (
    "name",
    "status",
    "outcome",
    "capabilities",
    "guardrails",
    "model",
    "schedule",
    "triggers",
    "playbook",
)
# What an operator rollback restores. Not ``status``: pause and resume are their own commands
# (a resume may replay missed events); a rollback never silently pauses or reactivates.
OPERATOR_ROLLBACK_FIELDS = (
    "outcome",
    "capabilities",
    "guardrails",
    "model",
    "schedule",
    "triggers",
    "playbook",
)
GUARDRAIL_DIFF_FIELDS = ("name", "description", "status", "rules", "budgets")
GUARDRAIL_ROLLBACK_FIELDS = ("description", "status", "rules", "budgets")

Path = list[str | int]


def _field(path: Sequence[str | int]) -> str:
    out = ""
    for seg in path:
        out += f"[{seg}]" if isinstance(seg, int) else (f".{seg}" if out else seg)
    return out


def _walk(old: Any, new: Any, path: Path, out: list[dict[str, Any]]) -> None:
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        for k in sorted(set(old) | set(new), key=str):
            p = [*path, str(k)]
            if k not in new:
                out.append(
                    {
                        "field": _field(p),
                        "path": p,
                        "op": "removed",
                        "before": old[k],
                        "after": None,
                    }
                )
            elif k not in old:
                out.append(
                    {"field": _field(p), "path": p, "op": "added", "before": None, "after": new[k]}
                )
            else:
                _walk(old[k], new[k], p, out)
        return
    if isinstance(old, list) and isinstance(new, list):
        for i in range(max(len(old), len(new))):
            p = [*path, i]
            if i >= len(new):
                out.append(
                    {
                        "field": _field(p),
                        "path": p,
                        "op": "removed",
                        "before": old[i],
                        "after": None,
                    }
                )
            elif i >= len(old):
                out.append(
                    {"field": _field(p), "path": p, "op": "added", "before": None, "after": new[i]}
                )
            else:
                _walk(old[i], new[i], p, out)
        return
    if type(old) is not type(new) or old != new:
        out.append(
            {"field": _field(path), "path": path, "op": "changed", "before": old, "after": new}
        )


def diff(old: Mapping[str, Any], new: Mapping[str, Any], fields: Iterable[str]) -> list[dict]:
    """Field-level changes from ``old`` to ``new`` (JSON-like documents), over ``fields`` only.
    Each change names its ``field`` (``guardrails[0].decision``), its ``path`` (segments, list
    indices as integers), ``op`` (``added`` | ``removed`` | ``changed``) and ``before``/``after``.
    A field absent from a document and one that is null are the same (a model dump always has
    every field). Lists compare by position; a longer list adds entries, a shorter removes."""
    out: list[dict[str, Any]] = []
    for f in fields:
        a, b = old.get(f), new.get(f)
        if a is None and b is None:
            continue
        if a is None:
            out.append({"field": f, "path": [f], "op": "added", "before": None, "after": b})
        elif b is None:
            out.append({"field": f, "path": [f], "op": "removed", "before": a, "after": None})
        else:
            _walk(a, b, [f], out)
    return out


def apply_diff(doc: Mapping[str, Any], changes: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """``doc`` with ``changes`` applied (the inverse of :func:`diff`: ``apply_diff(old,
    diff(old, new, f))`` equals ``new`` on ``f``). Removals apply from the end of a list."""
    import copy

    out = copy.deepcopy(dict(doc))
    changes = list(changes)
    # removals last and from the end, so a list shrinking pops its tail, highest index first
    ordered = [c for c in changes if c["op"] != "removed"]
    ordered += [c for c in reversed(changes) if c["op"] == "removed"]
    for c in ordered:
        *parents, last = c["path"]
        node: Any = out
        for seg in parents:
            node = node[seg]
        if c["op"] == "removed":
            if isinstance(node, list):
                node.pop(int(last))
            elif len(c["path"]) == 1:
                node[last] = None
            else:
                node.pop(last)
        elif isinstance(node, list) and c["op"] == "added":
            node.insert(int(last), copy.deepcopy(c["after"]))
        else:
            node[last] = copy.deepcopy(c["after"])
    return out


# ---- the audit trail ------------------------------------------------------------------------
# config record kind -> the API object type it is
AUDITED_KINDS = {
    "operator": "operator",
    "connector": "connector",
    "webhook_endpoint": "webhook_endpoint",
    "guardrail_policy": "guardrail_policy",
    "api_key": "api_key",
}
# Commands that write config records but change no configuration: a key's last use and an
# operator's last-run counters. They stay in config_log, not in the audit trail.
UNAUDITED_COMMANDS = frozenset({"key.touch", "operator.record_run"})
VERBS = {
    "create": "create",
    "install": "create",
    "update": "update",
    "set_status": "update",
    "delete": "delete",
    "uninstall": "delete",
    "rollback": "rollback",
    "revoke": "revoke",
    "rotate": "rotate",
    "pause": "pause",
    "resume": "resume",
}


def audit_action(note: str | None, kind: str) -> str:
    """The command a config record was written by, from its note (``"guardrail.update: grd_…
    v3 rules"`` → ``guardrail.update``); a record without one reads as ``<kind>.update``."""
    head = (note or "").split(":", 1)[0].split(" ", 1)[0].strip()
    return head if "." in head else f"{kind}.update"


def audit_verb(action: str) -> str:
    return VERBS.get(action.rsplit(".", 1)[-1], "update")


# ---- the governance report ------------------------------------------------------------------
def ratio(part: int, whole: int) -> float | None:
    """``part / whole`` rounded to 4 places; None when nothing was counted (no rate exists)."""
    return round(part / whole, 4) if whole else None


def summarise_dispositions(rows: Iterable[Mapping[str, Any]], top: int = 10) -> dict[str, Any]:
    """From ClickHouse's groups (one per operator, tool, decision and outcome, each with
    ``count`` and ``value_sum``): totals by decision and by outcome, by operator, and the
    ``top`` tools by BLOCK count (ties by tool name)."""
    by_decision: dict[str, int] = {}
    by_outcome: dict[str, int] = {}
    operators: dict[str, dict[str, Any]] = {}
    blocked: dict[str, dict[str, Any]] = {}
    total = 0
    for r in rows:
        n = int(r["count"])
        total += n
        by_decision[r["decision"]] = by_decision.get(r["decision"], 0) + n
        by_outcome[r["outcome"]] = by_outcome.get(r["outcome"], 0) + n
        o = operators.setdefault(
            r["operator_id"],
            {
                "operator_id": r["operator_id"],
                "operator_name": r["operator_name"],
                "receipts": 0,
                "by_decision": {},
                "by_outcome": {},
            },
        )
        o["receipts"] += n
        o["by_decision"][r["decision"]] = o["by_decision"].get(r["decision"], 0) + n
        o["by_outcome"][r["outcome"]] = o["by_outcome"].get(r["outcome"], 0) + n
        if r["decision"] == "BLOCK" and r.get("tool"):
            b = blocked.setdefault(r["tool"], {"tool": r["tool"], "count": 0, "operators": set()})
            b["count"] += n
            b["operators"].add(r["operator_id"])
    top_blocked = sorted(blocked.values(), key=lambda b: (-b["count"], b["tool"]))[:top]
    return {
        "receipts": total,
        "by_decision": dict(sorted(by_decision.items())),
        "by_outcome": dict(sorted(by_outcome.items())),
        "by_operator": sorted(operators.values(), key=lambda o: (-o["receipts"], o["operator_id"])),
        "top_blocked_tools": [
            {"tool": b["tool"], "count": b["count"], "operators": len(b["operators"])}
            for b in top_blocked
        ],
    }


def approval_counts(row: Mapping[str, Any]) -> dict[str, Any]:
    """One group of the approval query (overall, one operator or one approver) as the API
    reports it: counts, the veto rate over decided plans and the decision latency."""
    approved, vetoed = int(row["approved"]), int(row["vetoed"])
    decided = approved + vetoed
    return {
        "requested": int(row["requested"]),
        "approved": approved,
        "vetoed": vetoed,
        "expired": int(row["expired"]),
        "pending": int(row["requested"]) - decided - int(row["expired"]),
        "veto_rate": ratio(vetoed, decided),
        "latency_ms": {
            "count": decided,
            "p50": float(row["p50"]) if decided else None,
            "p95": float(row["p95"]) if decided else None,
            "mean": round(float(row["mean"]), 3) if decided else None,
            "max": float(row["max"]) if decided else None,
        },
    }


def exact_quantile(values: Sequence[float], q: float) -> float | None:
    """ClickHouse's ``quantileExact``: the element at index ``floor(q * n)`` of the sorted
    values (clamped to the last), the reference the report's SQL is tested against."""
    if not values:
        return None
    s = sorted(values)
    return float(s[min(int(q * len(s)), len(s) - 1)])


def _glob_ok(pattern: str | None, *names: str | None) -> bool:
    return pattern is None or any(n is not None and matches(pattern, n) for n in names)


def budgets_consumed(
    policies: Sequence[GuardrailPolicy],
    executions: Iterable[tuple[str, str, str, int, float]],
    hits: Iterable[tuple[str, int, str, int]],
    connector_names: Mapping[str, tuple[str, ...]],
) -> list[dict[str, Any]]:
    """Each budget of the active ``policies`` with what the window's executions that it counts
    consumed (count and summed value, over all its scope values: the report's window, not the
    budget's sliding one) and how many actions its exhaustion refused (BLOCK) or let run over a
    soft cap (ALERT). ``executions``: (operator name, connector id, tool, count, value);
    ``hits``: (policy id, budget index, decision, count); ``connector_names``: a connector id →
    the id, name and listing its glob may match (as the executor matches)."""
    rows = list(executions)
    by_hit: dict[tuple[str, int], dict[str, int]] = {}
    for gid, index, decision, n in hits:
        d = by_hit.setdefault((gid, index), {})
        d[decision] = d.get(decision, 0) + n
    out = []
    for gp in policies:
        if gp.status != "active":
            continue
        for i, b in enumerate(gp.budgets):
            n, total = 0, 0.0
            for op_name, cn_id, tool, count, value in rows:
                if (
                    _glob_ok(b.operator, op_name)
                    and _glob_ok(b.connector, *connector_names.get(cn_id, (cn_id,)))
                    and _glob_ok(b.tool, tool)
                ):
                    n += count
                    total += value
            hit = by_hit.get((gp.id, i), {})
            out.append(
                {
                    "guardrail_id": gp.id,
                    "guardrail": gp.name,
                    "guardrail_version": gp.version,
                    "index": i,
                    "per": list(b.per),
                    "window_seconds": b.window_seconds,
                    "max_count": b.max_count,
                    "max_value": b.max_value,
                    "on_exhausted": b.on_exhausted,
                    "consumed_count": n,
                    "consumed_value": round(total, 6),
                    "exhausted_blocked": hit.get("BLOCK", 0),
                    "exhausted_alerted": hit.get("ALERT", 0),
                }
            )
    return out
