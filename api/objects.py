"""The documented plan, action and receipt objects (spec §2.8, §2.9, §2.11), built in one place
from what is stored: the loop's lists, the exports, the live streams and the webhook deliveries
all publish through :class:`Publisher`. Pure over the stored models (no store, no request)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING, Any, get_args

import orjson

from connectors.marketplace import CATALOGUE_FILE
from schemas.plan import PUBLIC_PLAN_STATUS, ActionRecord, Decision, Outcome, Plan, Receipt

if TYPE_CHECKING:
    from api.auth import AuthContext
    from api.state import ApiState

OUTCOMES: tuple[str, ...] = get_args(Outcome)  # the spec's enums, from their one place
DECISIONS: tuple[str, ...] = get_args(Decision)
TERMINAL = {"applied", "refused", "deduplicated", "failed", "vetoed", "expired", "undone"}


# ---- the documented objects, built in one place from what is stored ----------------------------
# A tool the catalogue gives no tier: read tools are tier 0; a side-effecting tool of unknown
# trust is treated as the most dangerous tier (fail-closed, like the policy).
UNTIERED_WRITE_TIER = 3
# The verdict tier of a receipt that names no tool (a plan refused as a whole): nothing ran and
# nothing could have; decisions §26.
NO_TOOL_TIER = 0


@cache
def _catalogue_tiers() -> tuple[dict[tuple[str, str], int], dict[str, int]]:
    """Tool trust tiers from connectors/catalogue.json: by (listing, tool), and by tool name
    alone (the highest tier any listing gives it) for connectors since uninstalled. Read from
    the packaged JSON because the catalogue's pydantic model does not carry ``tier`` yet."""
    doc = orjson.loads(resources.files("connectors").joinpath(CATALOGUE_FILE).read_bytes())
    by_listing: dict[tuple[str, str], int] = {}
    by_tool: dict[str, int] = {}
    for listing in doc["listings"]:
        for t in listing["tools"]:
            tier = t.get("tier")
            if tier is None:
                tier = UNTIERED_WRITE_TIER if t["side_effect"] else 0
            by_listing[(listing["id"], t["name"])] = int(tier)
            by_tool[t["name"]] = max(by_tool.get(t["name"], 0), int(tier))
    return by_listing, by_tool


def tool_tier(listing: str | None, tool: str | None, side_effect: bool | None = None) -> int:
    """The trust tier (0–3) of a tool: the catalogue's, else 0 for a read and 3 otherwise."""
    if tool is None:
        return NO_TOOL_TIER
    by_listing, by_tool = _catalogue_tiers()
    if listing is not None and (listing, tool) in by_listing:
        return by_listing[(listing, tool)]
    if tool in by_tool:
        return by_tool[tool]
    return 0 if side_effect is False else UNTIERED_WRITE_TIER


@dataclass(frozen=True, slots=True)
class Publisher:
    """What turning stored rows into API objects needs beyond the rows: the tenant's reseller
    and the installed connectors (a connector's listing gives its tools' tiers). ``listing_of``
    is the config view's live mapping, read per lookup (never copied: it holds every tenant's)."""

    reseller_id: str | None
    connectors: Mapping[str, Any]  # cn_ id -> an object with ``listing`` (Connector)

    @classmethod
    def of(cls, state: ApiState, auth: AuthContext) -> Publisher:
        return cls(auth.tenant.reseller_id, getattr(state.view, "connectors", {}))

    def tier(self, connector_id: str | None, tool: str | None, side_effect: bool | None) -> int:
        cn = self.connectors.get(connector_id) if connector_id else None
        return tool_tier(getattr(cn, "listing", None), tool, side_effect)

    def receipt(self, r: Receipt) -> dict[str, Any]:
        return receipt_public(r, self)

    def action(self, a: ActionRecord, receipts: list[Receipt]) -> dict[str, Any]:
        return action_public(a, receipts, self)

    def plan(self, p: Plan, receipts: list[Receipt]) -> dict[str, Any]:
        return plan_public(p, receipts, self)


NO_PUBLISHER = Publisher(None, {})


def receipt_public(r: Receipt, pub: Publisher = NO_PUBLISHER) -> dict[str, Any]:
    """The receipt object (spec §2.11): every stored field, plus ``reseller_id``, ``operator``,
    ``connector``, ``verdict {decision, tier, rule}`` and ``at``."""
    d = r.model_dump(mode="json")
    d["reseller_id"] = pub.reseller_id
    d["operator"] = r.operator_name
    d["connector"] = r.connector_id
    d["verdict"] = {
        "decision": r.decision,
        "tier": pub.tier(r.connector_id, r.tool, None),
        "rule": d["rule"],
        "guardrail_version": r.guardrail_version,
    }
    d["at"] = d["created_at"]
    return d


def action_public(
    a: ActionRecord, receipts: list[Receipt], pub: Publisher = NO_PUBLISHER
) -> dict[str, Any]:
    """The action object (spec §2.8 ``actions[]``, §2.9): the stored action with its latest
    disposition, plus ``connector``, ``verdict.tier``, ``reversible``, ``receipt_id`` and
    ``disposed_at``, and ``undone_at`` (when its undo applied: pass the undo's receipts too,
    :func:`undo_receipts`)."""
    mine = sorted((r for r in receipts if r.action_id == a.id), key=lambda r: (r.created_at, r.id))
    # traceparent is propagation state (schemas/tracing.py); receipts carry the trace id
    d = a.model_dump(mode="json", exclude={"tenant_id", "traceparent"})
    d["object"] = "action"
    d["connector"] = a.connector_id
    d["verdict"]["tier"] = pub.tier(a.connector_id, a.tool, a.side_effect)
    d["reversible"] = bool(a.side_effect and a.compensating_tool and a.undo_of is None)
    d["decision"] = mine[-1].decision if mine else a.verdict.decision
    d["outcome"] = mine[-1].outcome if mine else None
    d["receipt_id"] = mine[-1].id if mine else None
    d["receipt_ids"] = [r.id for r in mine]
    final = [r for r in mine if r.outcome in TERMINAL]
    d["disposed_at"] = _iso(final[-1].created_at) if final else None
    undo_key = f"{a.idempotency_key}:undo"
    undone = [
        r.created_at for r in receipts if r.outcome == "undone" and r.idempotency_key == undo_key
    ]
    d["undone_at"] = _iso(min(undone)) if undone else None
    return d


def plan_status_detail(plan: Plan, actions: list[dict[str, Any]]) -> str:
    """The internal status, with ``executing``/``approved`` read as ``executed`` once every
    action has a final receipt (what ``status`` returned before it was mapped)."""
    outcomes = [a["outcome"] for a in actions]
    if (
        plan.status in ("executing", "approved")
        and outcomes
        and all(o in TERMINAL for o in outcomes)
    ):
        return "executed"
    return plan.status


def plan_public(
    plan: Plan, receipts: list[Receipt], pub: Publisher = NO_PUBLISHER
) -> dict[str, Any]:
    """The execution_plan object (spec §2.8): ``status`` is one of the documented four
    (PUBLIC_PLAN_STATUS, decisions §26), the internal one is ``status_detail``;
    ``proposed_at`` and ``disposed_at`` (null while proposed)."""
    d = plan.model_dump(mode="json", exclude={"tenant_id"})
    d["actions"] = [action_public(a, receipts, pub) for a in plan.actions]
    d["status_detail"] = plan_status_detail(plan, d["actions"])
    d["status"] = PUBLIC_PLAN_STATUS[plan.status]
    d["proposed_at"] = d["created_at"]
    d["disposed_at"] = None if d["status"] == "proposed" else d["updated_at"]
    d["receipt_ids"] = sorted(r.id for r in receipts if r.plan_id == plan.id)
    return d


def _iso(dt: datetime) -> str:
    return dt.astimezone(UTC).isoformat().replace("+00:00", "Z")
