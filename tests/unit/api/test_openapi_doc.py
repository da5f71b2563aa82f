"""The OpenAPI document Litestar generates from the handlers (decisions §29): typed 2xx bodies,
request bodies with the models' own schema, every error status with the envelope, conventional
headers, no dangling reference; and the helpers behind it (respond, Allow on 405 and OPTIONS)."""

from __future__ import annotations

import re
from typing import Any

import orjson
import pytest
from litestar import Litestar, get, post
from litestar.exceptions import MethodNotAllowedException
from litestar.testing import TestClient

from api import respond as respond_mod
from api.app import create_app
from api.controllers.health import _jsonable
from api.errors import handle_exception, to_error
from api.respond import ResponseDrift, check, documented, respond
from api.server import FibricLitestar
from schemas.envelope import EVENT_TYPE_PATTERN, EventIn
from schemas.objects import ErrorEnvelope, EventObject, ListOf
from schemas.operator import OperatorCreate
from schemas.settings import Settings

METHODS = ("get", "post", "patch", "put", "delete")
# The downloads' 200 is the file itself (a receipt export; a guardrail replay's result).
BINARY_OK = {"downloadExport", "exportGuardrailReplay"}
STREAMING = re.compile(r"/(stream|ws)$")


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    app = create_app(Settings())
    return orjson.loads(orjson.dumps(app.openapi_schema.to_schema(), default=_jsonable))


def _operations(doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """Every operation but the streaming ones (SSE/WebSocket, another change's)."""
    return [
        (path, method, op)
        for path, item in doc["paths"].items()
        for method, op in item.items()
        if method in METHODS and not STREAMING.search(path)
    ]


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        out = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return out + [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def test_every_reference_resolves(doc: dict[str, Any]) -> None:
    for ref in _refs(doc):
        assert ref.startswith("#/components/"), ref
        node: Any = doc
        for part in ref[2:].split("/"):
            assert part in node, f"unresolvable {ref}"
            node = node[part]


def _schema(doc: dict[str, Any], s: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in s:
        s = doc["components"]["schemas"][s["$ref"].rsplit("/", 1)[1]]
    return s


def test_every_success_body_is_a_typed_json_object(doc: dict[str, Any]) -> None:
    for path, method, op in _operations(doc):
        ok = [(s, r) for s, r in op["responses"].items() if s.startswith("2")]
        assert len(ok) == 1, f"{method} {path}"
        status, response = ok[0]
        if op["operationId"] in BINARY_OK:
            assert {"text/csv", "application/x-ndjson"} <= set(response["content"])
            continue
        schema = _schema(doc, response["content"]["application/json"]["schema"])
        assert schema.get("type") == "object" and schema.get("properties"), f"{method} {path}"


@pytest.mark.parametrize(
    "op_id,model",
    [("listEvents", ListOf[EventObject]), ("retrieveEvent", EventObject)],
)
def test_success_schemas_are_the_declared_models(doc: dict[str, Any], op_id: str, model) -> None:
    op = next(op for _, _, op in _operations(doc) if op["operationId"] == op_id)
    schema = _schema(doc, op["responses"]["200"]["content"]["application/json"]["schema"])
    assert set(schema["properties"]) == set(model.model_fields)


def test_every_v1_operation_declares_its_errors_with_the_envelope(doc: dict[str, Any]) -> None:
    envelope = set(ErrorEnvelope.model_fields)
    for path, method, op in _operations(doc):
        if not path.startswith("/v1/"):
            continue
        errors = {s: r for s, r in op["responses"].items() if s[0] in "45"}
        assert {"400", "401", "403", "429", "500"} <= set(errors), f"{method} {path}"
        if "{" in path:
            assert "404" in errors, f"{method} {path}"
        if "requestBody" in op:
            assert {"413", "415"} <= set(errors), f"{method} {path}"
        for status, r in errors.items():
            schema = _schema(doc, r["content"]["application/json"]["schema"])
            assert set(schema["properties"]) == envelope, f"{method} {path} {status}"
            assert "Request-Id" in r["headers"], f"{method} {path} {status}"
        assert "Retry-After" in errors["429"]["headers"]
        assert "X-RateLimit-Remaining" in errors["429"]["headers"]
        assert "X-RateLimit-Remaining" not in errors["401"]["headers"]  # no tenant to count


def test_request_bodies_are_the_models_own_schemas(doc: dict[str, Any]) -> None:
    ops = {op["operationId"]: op for _, _, op in _operations(doc)}
    body = ops["createEvent"]["requestBody"]
    assert body["required"] is True
    schema = body["content"]["application/json"]["schema"]
    assert schema["additionalProperties"] is False  # extra="forbid"
    assert schema["properties"]["event_type"]["pattern"] == EVENT_TYPE_PATTERN
    operator = ops["createOperator"]["requestBody"]["content"]["application/json"]["schema"]
    assert set(operator["required"]) == {
        n for n, f in OperatorCreate.model_fields.items() if f.is_required()
    }
    assert "pattern" in operator["properties"]["name"]
    assert operator["properties"]["capabilities"]["items"]["pattern"]
    assert "$defs" not in str(operator)  # nested models inlined (the old #/$defs/Guardrail)
    # bodies that may be omitted (every field has a default)
    for op_id in ("pauseOperator", "resumeOperator", "approvePlan", "vetoPlan", "undoAction"):
        assert ops[op_id]["requestBody"]["required"] is False, op_id
    assert ops["createReceiptExport"]["requestBody"]["required"] is True


def test_health_needs_no_key_and_v1_the_bearer(doc: dict[str, Any]) -> None:
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert doc["security"] == [{"bearer": []}]
    ops = {op["operationId"]: op for _, _, op in _operations(doc)}
    assert ops["healthz"]["security"] == [{}] and ops["readyz"]["security"] == [{}]
    assert "503" in ops["readyz"]["responses"]


# ---- the helpers ----------------------------------------------------------------------------
def test_respond_keeps_orjson_bytes_and_validates_when_asked(monkeypatch) -> None:
    good = {"object": "list", "data": [], "has_more": False, "next_cursor": None}
    r = respond(ListOf[EventObject], good, 200)
    assert r.content == orjson.dumps(good) and r.status_code == 200
    check(ListOf[EventObject], orjson.dumps(good))
    with pytest.raises(ResponseDrift):
        check(ListOf[EventObject], orjson.dumps({**good, "extra": 1}))
    monkeypatch.setattr(respond_mod, "_VALIDATE", True)
    with pytest.raises(ResponseDrift):
        respond(ListOf[EventObject], {**good, "has_more": "maybe"})
    monkeypatch.setattr(respond_mod, "_VALIDATE", False)
    respond(ListOf[EventObject], {**good, "has_more": "maybe"})  # production: no cost


def test_the_body_dto_hands_the_handler_raw_bytes() -> None:
    seen: list[Any] = []

    @post("/x", status_code=200, **documented(body=EventIn))
    async def handler(data: EventIn | None = None) -> dict[str, str]:
        seen.append(data)
        return {"ok": "yes"}

    with TestClient(Litestar([handler])) as c:
        assert c.post("/x", content=b"not json at all").status_code == 200
        assert c.post("/x").status_code == 200
    assert seen == [b"not json at all", None]


def test_405_carries_allow_and_options_lists_every_method() -> None:
    err = to_error(MethodNotAllowedException(headers={"allow": "GET, OPTIONS, POST"}))
    assert err.status == 405 and err.headers == {"Allow": "GET, OPTIONS, POST"}

    @get("/things")
    async def list_things() -> None:
        return None

    @post("/things")
    async def create_thing() -> None:
        return None

    app = FibricLitestar(
        [list_things, create_thing], exception_handlers={Exception: handle_exception}
    )
    with TestClient(app) as c:
        r = c.options("/things")
        assert r.status_code == 204
        assert set(r.headers["allow"].split(", ")) == {"GET", "OPTIONS", "POST"}
        r = c.put("/things")
        assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"
        assert set(r.headers["allow"].split(", ")) == {"GET", "OPTIONS", "POST"}
