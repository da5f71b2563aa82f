"""The execution_plan, action and receipt objects (and the receipt export row) against the spec's
tables (tests/spec_shapes.py, transcribed from fibric-spec §2.8, §2.9, §2.11): the response
models declare every documented field with its documented type and enum values, and the
builders the api returns produce exactly those models."""

from __future__ import annotations

import csv
import io
import typing
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from api.controllers.loop import PLAN_STATUSES
from api.objects import Publisher, action_public, plan_public, receipt_public, tool_tier
from api.pagination import decode_cursor, encode_cursor
from api.services.exports import EXPORT_COLUMNS, _Writer, csv_lines, jsonl_lines
from connectors.marketplace import load_catalogue
from schemas.config import ApiKey
from schemas.connector import Connector
from schemas.envelope import Event
from schemas.errors import ErrorCode, FibricError
from schemas.objects import (
    ApiKeyCreated,
    ApiKeyObject,
    ConnectorObject,
    ConnectorSummary,
    ConnectorTestObject,
    ErrorEnvelope,
    EventObject,
    ExportObject,
    ListOf,
    OperatorObject,
)
from schemas.operator import Guardrail, LastRun, Operator
from schemas.plan import (
    PUBLIC_PLAN_STATUS,
    ActionObject,
    ActionRecord,
    Plan,
    PlanObject,
    PlanStatus,
    Receipt,
    ReceiptObject,
    Verdict,
)
from tests.spec_shapes import (
    ACTION,
    EXECUTION_PLAN,
    NESTED,
    NULLABLE,
    TABLES,
    allowed_types,
    problems,
)

T0 = datetime(2026, 6, 14, 9, 2, 11, tzinfo=UTC)
RULE = {"tool": "order.hold", "decision": "ALLOW", "max_value": 500, "index": 0}


# ---- the response models against the tables ---------------------------------------------------
def _json_types(schema: dict[str, Any], defs: dict[str, Any]) -> tuple[set[str], list | None]:
    """The JSON kinds (and enum) a field's JSON schema admits."""
    if "$ref" in schema:
        schema = defs[schema["$ref"].rsplit("/", 1)[1]]
    if "anyOf" in schema:
        kinds: set[str] = set()
        enum: list | None = None
        for s in schema["anyOf"]:
            k, e = _json_types(s, defs)
            kinds |= k
            enum = e if e is not None else enum
        return kinds, enum
    enum = schema.get("enum") or ([schema["const"]] if "const" in schema else None)
    t = schema.get("type")
    if t is None and enum is not None:
        t = "string" if all(isinstance(v, str) for v in enum) else "integer"
    if t is None:
        return {"string", "integer", "number", "boolean", "object", "array", "null"}, enum
    kinds = {t}
    if t == "string" and schema.get("format") == "date-time":
        kinds.add("rfc3339")
    if t == "integer":
        kinds.add("number")
    return kinds, enum


MODELS: dict[str, Any] = {
    "execution_plan": PlanObject,
    "action": ActionObject,
    "receipt": ReceiptObject,
    "event": EventObject,
    "operator": OperatorObject,
    "connector": ConnectorObject,
    "connector_test": ConnectorTestObject,
    "api_key": ApiKeyObject,
    "export": ExportObject,
    "list": ListOf[ReceiptObject],
    "error": ErrorEnvelope,
}


def _object_schema(schema: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """The object schema a field holds: through ``$ref``, array ``items`` and nullable unions."""
    if "$ref" in schema:
        return _object_schema(defs[schema["$ref"].rsplit("/", 1)[1]], defs)
    if schema.get("type") == "array":
        return _object_schema(schema["items"], defs)
    for sub in schema.get("anyOf", []):
        if sub.get("type") != "null":
            return _object_schema(sub, defs)
    return schema


def _model_schema(name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    if name in MODELS:
        s = MODELS[name].model_json_schema(mode="serialization")
        return s["properties"], s.get("$defs", {})
    parent, field = next(k for k, (sub, _) in NESTED.items() if sub == name)
    props, defs = _model_schema(parent)
    return _object_schema(props[field], defs)["properties"], defs


def test_every_table_has_a_model() -> None:
    nested = {sub for sub, _ in NESTED.values()}
    assert set(TABLES) == set(MODELS) | nested


@pytest.mark.parametrize("name", sorted(TABLES))
def test_every_documented_field_has_its_name_type_and_enum(name: str) -> None:
    props, defs = _model_schema(name)
    for field, f in TABLES[name].items():
        assert field in props, f"{name}.{field} is documented but not returned"
        kinds, enum = _json_types(props[field], defs)
        documented = allowed_types(name, field, f)
        if "rfc3339" in documented:
            assert "rfc3339" in kinds, f"{name}.{field} must be an RFC 3339 timestamp"
        wanted = {"string" if k == "rfc3339" else k for k in documented}
        if "number" in wanted:
            wanted.add("integer")  # an integer is a JSON number
        ours = kinds - {"rfc3339"} - ({"number"} if "integer" in kinds else set())
        assert ours <= wanted, f"{name}.{field}: ours {sorted(ours)}, documented {sorted(wanted)}"
        if f.const is not None:
            assert enum == [f.const], f"{name}.{field} must be {f.const!r}"
        if f.enum is not None:
            assert enum is not None, f"{name}.{field} must be an enum"
            ours = {v for v in enum if v is not None}
            assert set(f.enum) <= ours, f"{name}.{field}: documented {f.enum} missing from {ours}"
            if f.exact:
                assert ours == set(f.enum), f"{name}.{field}: only {f.enum} may be returned"


def test_the_nullable_deviations_are_the_listed_ones() -> None:
    for name, field in NULLABLE:
        props, defs = _model_schema(name)
        kinds, _ = _json_types(props[field], defs)
        assert "null" in kinds and "null" not in TABLES[name][field].types


def test_nested_tables_are_the_models_nested_objects() -> None:
    assert {k[0] for k in NESTED} <= set(TABLES)


# ---- the builders produce the models -----------------------------------------------------------
def _action(**kw: Any) -> ActionRecord:
    base: dict[str, Any] = {
        "id": "act_01J0000000000000000000000A",
        "plan_id": "pl_01J0000000000000000000000A",
        "tenant_id": "t_01J0000000000000000000000A",
        "livemode": False,
        "operator_id": "op_01J0000000000000000000000A",
        "operator_name": "order-risk",
        "guardrail_version": 3,
        "event_id": "ev_01J0000000000000000000000A",
        "correlation_id": "co_01J0000000000000000000000A",
        "connector_id": "cn_01J0000000000000000000000A",
        "connector_name": "store",
        "tool": "order.hold",
        "side_effect": True,
        "compensating_tool": "order.release",
        "args": {"order_id": "SO-10884", "reason": "promise_risk"},
        "value": None,
        "entity_key": "order:SO-10884",
        "idempotency_key": "order-risk:SO-10884:hold",
        "verdict": Verdict(decision="ALLOW", rule=RULE, reason="allowed by guardrail 0"),
        "proposed_at": T0,
    }
    return ActionRecord.model_validate({**base, **kw})


def _receipt(a: ActionRecord, outcome: str = "applied", decision: str = "ALLOW", **kw) -> Receipt:
    base: dict[str, Any] = {
        "id": f"rc_01J00000000000000000000{outcome[:3].upper()}",
        "tenant_id": a.tenant_id,
        "livemode": a.livemode,
        "operator_id": a.operator_id,
        "operator_name": a.operator_name,
        "guardrail_version": a.guardrail_version,
        "event_id": a.event_id,
        "plan_id": a.plan_id,
        "action_id": a.id,
        "correlation_id": a.correlation_id,
        "connector_id": a.connector_id,
        "connector_name": a.connector_name,
        "tool": a.tool,
        "entity_key": a.entity_key,
        "idempotency_key": a.idempotency_key,
        "value": a.value,
        "decision": decision,
        "outcome": outcome,
        "rule": a.verdict.rule,
        "reason": "ok",
        "result": {"held": True},
        "request_id": "req_1",
        "latency_ms": 12.5,
        "proposed_at": a.proposed_at,
        "created_at": T0 + timedelta(seconds=1),
    }
    return Receipt.model_validate({**base, **kw})


def _plan(status: str, actions: list[ActionRecord], **kw: Any) -> Plan:
    base: dict[str, Any] = {
        "id": "pl_01J0000000000000000000000A",
        "tenant_id": "t_01J0000000000000000000000A",
        "livemode": False,
        "operator_id": "op_01J0000000000000000000000A",
        "operator_name": "order-risk",
        "guardrail_version": 3,
        "event_id": "ev_01J0000000000000000000000A",
        "correlation_id": "co_01J0000000000000000000000A",
        "model": "rules",
        "status": status,
        "reasoning": "promise date at risk",
        "actions": actions,
        "created_at": T0,
        "updated_at": T0 + timedelta(minutes=5),
    }
    return Plan.model_validate({**base, **kw})


@dataclass
class _Cn:
    listing: str


BACNET = Publisher(None, {"cn_01J0000000000000000000000A": _Cn("cn-bacnet-gateway")})
MAGENTO = Publisher("rs_1", {"cn_01J0000000000000000000000A": _Cn("cn-magento")})


def test_receipt_object_matches_the_spec_and_keeps_every_stored_field() -> None:
    a = _action()
    r = _receipt(a)
    d = receipt_public(r, MAGENTO)
    ReceiptObject.model_validate(d)  # extra="forbid": builder and model agree
    assert problems(d, "receipt") == []
    assert set(r.model_dump()) <= set(d)  # additive: nothing renamed or removed
    assert d["verdict"] == {"decision": "ALLOW", "tier": 1, "rule": RULE, "guardrail_version": 3}
    assert (d["operator"], d["connector"], d["reseller_id"]) == (
        "order-risk",
        a.connector_id,
        "rs_1",
    )
    assert d["at"] == d["created_at"] == "2026-06-14T09:02:12Z"
    assert (d["decision"], d["rule"], d["operator_name"], d["connector_id"]) == (
        "ALLOW",
        RULE,
        "order-risk",
        a.connector_id,
    )


def test_a_plan_refused_whole_reads_with_its_documented_deviations() -> None:
    r = Receipt.model_validate(
        {
            **_receipt(_action()).model_dump(),
            "action_id": None,
            "connector_id": None,
            "connector_name": None,
            "tool": None,
            "entity_key": None,
            "idempotency_key": None,
            "decision": "BLOCK",
            "outcome": "refused",
            "rule": None,
            "request_id": None,
        }
    )
    d = receipt_public(r, MAGENTO)
    ReceiptObject.model_validate(d)
    assert problems(d, "receipt") == []
    assert d["verdict"] == {"decision": "BLOCK", "tier": 0, "rule": None, "guardrail_version": 3}


@pytest.mark.parametrize("stored", typing.get_args(PlanStatus))
def test_plan_object_for_every_stored_status(stored: str) -> None:
    a = _action()
    receipts = [_receipt(a)] if stored in ("executing", "approved", "executed") else []
    d = plan_public(_plan(stored, [a]), receipts, MAGENTO)
    PlanObject.model_validate(d)
    assert problems(d, "execution_plan") == []
    assert d["status"] in PLAN_STATUSES and d["status"] == PUBLIC_PLAN_STATUS[stored]
    assert d["proposed_at"] == "2026-06-14T09:02:11Z"
    if stored == "proposed":
        assert d["disposed_at"] is None
    else:
        assert d["disposed_at"] == "2026-06-14T09:07:11Z"
    expected_detail = "executed" if stored in ("executing", "approved") else stored
    assert d["status_detail"] == expected_detail
    assert d["actions"][0]["verdict"]["tier"] == 1


def test_every_stored_status_maps_to_a_documented_one() -> None:
    assert set(PUBLIC_PLAN_STATUS) == set(typing.get_args(PlanStatus))
    assert set(PUBLIC_PLAN_STATUS.values()) == set(EXECUTION_PLAN["status"].enum)


def test_action_object_reversible_and_disposition() -> None:
    a = _action()
    pending = action_public(a, [], MAGENTO)
    ActionObject.model_validate(pending)
    assert problems(pending, "action") == []
    assert (pending["outcome"], pending["receipt_id"], pending["disposed_at"]) == (None, None, None)
    assert pending["reversible"] is True and pending["connector"] == a.connector_id
    done = action_public(a, [_receipt(a)], MAGENTO)
    assert problems(done, "action") == []
    assert done["outcome"] == "applied" and done["disposed_at"] == "2026-06-14T09:02:12Z"
    assert done["receipt_id"] == done["receipt_ids"][-1]
    held = action_public(a, [_receipt(a, "pending_approval", "ALERT")], MAGENTO)
    assert held["disposed_at"] is None  # pending approval is not a disposition
    notify = action_public(_action(tool="order.notify", compensating_tool=None), [], MAGENTO)
    assert notify["reversible"] is False and notify["verdict"]["tier"] == 2
    undo = action_public(
        _action(tool="order.release", compensating_tool=None, undo_of=a.id), [], MAGENTO
    )
    assert undo["reversible"] is False
    assert set(ACTION) <= set(done)


# ---- tiers ----------------------------------------------------------------------------------
def test_every_catalogue_tool_has_a_tier_and_reads_are_tier_0() -> None:
    raw = orjson.loads(
        (__import__("importlib").resources.files("connectors") / "catalogue.json").read_bytes()
    )
    for listing in raw["listings"]:
        for t in listing["tools"]:
            assert t.get("tier") in (0, 1, 2, 3), (listing["id"], t["name"])
            assert (t["tier"] == 0) == (not t["side_effect"]), (listing["id"], t["name"])
    assert set(load_catalogue())  # the catalogue still parses with the new key


def test_tool_tier_fallbacks() -> None:
    assert tool_tier("cn-magento", "order.hold") == 1
    assert tool_tier(None, "order.hold") == 1  # uninstalled connector: by tool name
    assert tool_tier("cn-bacnet-gateway", "setpoint.write") == 3
    assert tool_tier(None, "unknown.write", True) == 3  # fail-closed
    assert tool_tier(None, "unknown.read", False) == 0
    assert tool_tier(None, None) == 0


# ---- the export row is the receipt object ---------------------------------------------------
def test_export_rows_are_receipt_objects(tmp_path) -> None:
    a = _action()
    rows = [
        receipt_public(_receipt(a), MAGENTO),
        receipt_public(
            _receipt(a, "failed", error={"code": "x"}, result=None, latency_ms=None), MAGENTO
        ),
    ]
    assert list(EXPORT_COLUMNS) == list(rows[0])
    assert [orjson.loads(x) for x in jsonl_lines(rows).splitlines()] == rows
    text = csv_lines(rows, header=True)
    assert b"\\N" not in text
    table = list(csv.reader(io.StringIO(text.decode())))
    assert table[0] == list(EXPORT_COLUMNS)
    failed = dict(zip(table[0], table[2], strict=True))
    assert failed["result"] == "" and failed["latency_ms"] == "" and failed["approver"] == ""
    assert failed["at"] == "2026-06-14T09:02:12Z" and failed["livemode"] == "false"
    assert orjson.loads(failed["verdict"]) == rows[1]["verdict"]
    assert orjson.loads(failed["error"]) == {"code": "x"}
    w = _Writer(tmp_path / "x.parquet", "parquet")
    w.write(rows)
    assert w.close() > 0
    pt = pq.read_table(tmp_path / "x.parquet")
    assert pt.column_names == list(EXPORT_COLUMNS) and pt.num_rows == 2
    assert pt.schema.field("at").type == pa.timestamp("us", tz="UTC")
    first = pt.to_pylist()[0]
    assert first["verdict"]["tier"] == 1 and orjson.loads(first["verdict"]["rule"]) == RULE
    empty = _Writer(tmp_path / "e.parquet", "parquet")
    empty.close()
    assert pq.read_table(tmp_path / "e.parquet").num_rows == 0


# ---- cursors are bound to their list --------------------------------------------------------
def test_a_cursor_from_one_list_is_refused_by_another() -> None:
    key = (T0, "rc_1")
    cur = encode_cursor(key, {}, "receipts")
    assert decode_cursor(cur, {}, "receipts") == key
    for other in ("plans", "actions", ""):
        with pytest.raises(FibricError) as e:
            decode_cursor(cur, {}, other)
        assert e.value.code == "invalid_cursor"


def test_the_tier_comes_from_the_actions_connector_listing() -> None:
    write = _action(tool="setpoint.write", compensating_tool=None)
    assert action_public(write, [], BACNET)["verdict"]["tier"] == 3
    gone = Publisher(None, {})  # connector uninstalled since: the tool name decides
    assert action_public(write, [], gone)["verdict"]["tier"] == 3
    assert receipt_public(_receipt(_action()), gone)["verdict"]["tier"] == 1


# ---- the other objects: the stored models' public forms are the response models ----------------
def test_event_object() -> None:
    ev = Event(
        id="ev_01J0000000000000000000000A",
        tenant_id="t_01J0000000000000000000000A",
        livemode=False,
        source="magento",
        event_type="order.updated",
        correlation_id="co_01J0000000000000000000000A",
        payload={"increment_id": "SO-10884"},
        created_at=T0,
    )
    out = orjson.loads(orjson.dumps({**ev.model_dump(mode="json"), "plan_ids": []}))
    EventObject.model_validate(out)
    assert problems(out, "event") == []


def _operator(**kw: Any) -> Operator:
    base: dict[str, Any] = {
        "id": "op_01J0000000000000000000000A",
        "tenant_id": "t_01J0000000000000000000000A",
        "livemode": False,
        "name": "order-risk",
        "status": "active",
        "outcome": "Hold risky orders.",
        "capabilities": ["order.hold"],
        "guardrails": [Guardrail(tool="order.hold", max_value=500, decision="ALLOW")],
        "triggers": ["order.**"],
        "created_at": T0,
        "updated_at": T0,
    }
    return Operator(**{**base, **kw})


def test_operator_object_with_and_without_a_last_run() -> None:
    for op in (
        _operator(),
        _operator(last_run=LastRun(run_id="run_1", sensed=3, proposed=2, applied=1, at=T0)),
    ):
        out = op.public()
        OperatorObject.model_validate(out)
        assert problems(out, "operator") == []
        assert not set(out) & {"tenant_id", "deleted", "pause_reason"}
    last = _operator(last_run=LastRun(run_id="r", sensed=3, proposed=2, applied=1, at=T0))
    lr = last.public()["last_run"]
    assert (lr["events_sensed"], lr["actions_proposed"], lr["actions_applied"]) == (3, 2, 1)
    assert (lr["sensed"], lr["proposed"], lr["applied"]) == (3, 2, 1)  # ours, kept


def _connector(**kw: Any) -> Connector:
    base: dict[str, Any] = {
        "id": "cn_01J0000000000000000000000A",
        "tenant_id": "t_01J0000000000000000000000A",
        "livemode": False,
        "listing": "cn-magento",
        "name": "magento-us-store",
        "kind": "saas",
        "capabilities": ["order.read", "order.hold"],
        "tools": [
            {"name": "order.read", "side_effect": False, "capability": "order.read"},
            {"name": "order.hold", "side_effect": True, "compensating_tool": "order.release"},
        ],
        "auth": {"type": "api_key", "hint": "mg_****41"},
        "config": {"base_url": "https://shop.example"},
        "status": "connected",
        "remote_url": "https://mcp.example/secret-path",
        "created_at": T0,
        "updated_at": T0,
    }
    return Connector(**{**base, **kw})


def test_connector_object_and_summary() -> None:
    cn = _connector()
    out = cn.public()
    ConnectorObject.model_validate(out)
    assert problems(out, "connector") == []
    assert out["installed_at"] == "2026-06-14T09:02:11Z" and "remote_url" not in out
    assert out["tools"] == [
        {"name": "order.read", "side_effect": False},
        {"name": "order.hold", "side_effect": True},
    ]
    ConnectorSummary.model_validate(cn.summary())
    pending = _connector(status="pending_auth", authorize_url="https://auth.example/?state=x")
    ConnectorObject.model_validate(pending.public())
    with pytest.raises(ValueError):  # a field the model does not declare is drift
        ConnectorObject.model_validate({**out, "remote_url": "https://x"})


def test_connector_test_object_from_seed_001() -> None:
    seed = {
        "object": "connector_test",
        "connector_id": "cn_7d2f4a",
        "status": "passed",
        "results": [
            {"tool": "order.read", "mode": "live", "ok": True, "latency_ms": 184},
            {"tool": "order.hold", "mode": "dry_run", "ok": True, "latency_ms": 211},
        ],
        "tested_at": "2026-07-02T15:22:31Z",
    }
    ConnectorTestObject.model_validate(seed)
    assert problems(seed, "connector_test") == []


def test_api_key_object_and_created_key() -> None:
    key = ApiKey(
        id="key_01J0000000000000000000000A",
        tenant_id="t_01J0000000000000000000000A",
        name="ci",
        mode="test",
        role="read_only",
        scopes=["events:read"],
        hint="sk_test_…a2c9",
        secret_hash="x" * 64,
        created_at=T0,
    )
    out = key.public()
    ApiKeyObject.model_validate(out)
    assert problems(out, "api_key") == [] and "secret_hash" not in out
    ApiKeyCreated.model_validate({**out, "secret": "sk_test_" + "a" * 32})
    with pytest.raises(ValueError):
        ApiKeyObject.model_validate({**out, "secret_hash": "x"})


def test_export_object_list_and_error_envelopes() -> None:
    job = {
        "id": "exp_01J0000000000000000000000A",
        "object": "receipt_export",
        "status": "running",
        "format": "jsonl",
        "filters": {"operator_id": "op_1"},
        "created_at": "2026-06-14T09:02:11Z",
        "expires_at": "2026-06-15T09:02:11Z",
        "row_count": None,
        "url": None,
    }
    ExportObject.model_validate(job)
    assert problems(job, "export") == []
    page = {"object": "list", "data": [], "has_more": False, "next_cursor": None}
    ListOf[ReceiptObject].model_validate(page)
    assert problems(page, "list") == []
    err = FibricError(ErrorCode.INVALID_PARAMETER, "limit must be…", param="limit")
    envelope = err.envelope("req_01J0000000000000000000000A")
    ErrorEnvelope.model_validate(envelope)
    assert problems(envelope, "error") == []
