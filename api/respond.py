"""Typed responses and request bodies that keep the fast paths: handlers build plain dicts and
serialise them with orjson, while their annotations give Litestar what the OpenAPI document
needs (decisions §29).

* :func:`respond` returns ``Response[Model]``: the annotation names the response model; the body
  stays orjson bytes. With ``FIBRIC_VALIDATE_RESPONSES=1`` (the test stack sets it) every body is
  validated against the model first, so a builder drifting from its model fails the tests.
* :func:`body_dto` is a Litestar DTO for a handler's ``data`` parameter: Litestar documents the
  request body from the model, but the DTO hands the handler the raw bytes (no parse, no
  validation): the handler reads and validates them itself (api/body.py), with our envelope.
* :func:`errors` declares the error statuses of an operation, each with the error envelope.
* :class:`FibricOperation` documents the headers every response carries (``Request-Id``,
  ``Fibric-Version``, ``X-RateLimit-*``) and ``Retry-After`` on 429/503.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import orjson
from litestar import Response
from litestar.dto import AbstractDTO, DTOFieldDefinition
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import OpenAPIHeader, OpenAPIResponse, Operation, Reference, Schema
from litestar.openapi.spec.enums import OpenAPIType
from litestar.typing import FieldDefinition
from pydantic import BaseModel, TypeAdapter, ValidationError

from schemas.objects import ErrorEnvelope

log = logging.getLogger(__name__)

M = TypeVar("M")
VALIDATE_ENV = "FIBRIC_VALIDATE_RESPONSES"


def validating() -> bool:
    return os.environ.get(VALIDATE_ENV, "") not in ("", "0", "false")


_VALIDATE = validating()
_ADAPTERS: dict[Any, TypeAdapter[Any]] = {}


class ResponseDrift(Exception):
    """A response body that does not match its declared model (raised only when validating)."""


def check(model: Any, body: bytes) -> None:
    """Validate a JSON body against ``model`` (a pydantic model or any type TypeAdapter takes)."""
    adapter = _ADAPTERS.get(model)
    if adapter is None:
        adapter = _ADAPTERS[model] = TypeAdapter(model)
    try:
        adapter.validate_json(body)
    except ValidationError as exc:
        name = getattr(model, "__name__", repr(model))
        log.error("response drifted from %s: %s", name, exc)
        raise ResponseDrift(f"response does not match {name}: {exc}") from None


def respond(
    model: type[M], data: Any, status: int = 200, headers: dict[str, str] | None = None
) -> Response[M]:
    """``data`` as orjson bytes, declared as ``model`` (validated against it when testing)."""
    body = data if isinstance(data, bytes) else orjson.dumps(data)
    if _VALIDATE:
        check(model, body)
    return cast(
        "Response[M]",
        Response(body, status_code=status, media_type="application/json", headers=headers),
    )


# ---- request bodies ---------------------------------------------------------------------------
class RawBody(AbstractDTO[M]):
    """Documents ``data: Model`` as the request body; decodes nothing (the handler gets bytes)."""

    @classmethod
    def generate_field_definitions(
        cls, model_type: type[Any]
    ) -> Generator[DTOFieldDefinition, None, None]:
        yield from ()

    @classmethod
    def detect_nested_field(cls, field_definition: FieldDefinition) -> bool:
        return False

    @classmethod
    def create_for_field_definition(
        cls, field_definition: FieldDefinition, handler_id: str, backend_cls: Any = None
    ) -> None:
        return None

    @classmethod
    def create_openapi_schema(
        cls, field_definition: FieldDefinition, handler_id: str, schema_creator: Any
    ) -> Reference | Schema:
        return PydanticSchema(raw=body_schema(cls.model_type))  # type: ignore[arg-type]

    def decode_bytes(self, value: bytes) -> Any:
        return value

    def decode_builtins(self, value: dict[str, Any]) -> Any:
        return value


@dataclass
class PydanticSchema(Schema):
    """A schema rendered as pydantic's own JSON schema of the model: what the handler validates
    with, exactly (patterns, bounds, ``additionalProperties: false`` for ``extra="forbid"``), where
    Litestar's generator would drop patterns and extra-handling. Request bodies use it so a
    fuzzer's schema-valid body is one the handler accepts."""

    raw: dict[str, Any] | None = None

    def to_schema(self) -> dict[str, Any]:
        return dict(self.raw or {})


def body_schema(model: type[BaseModel]) -> dict[str, Any]:
    """``model``'s validation JSON schema with its ``$defs`` inlined (bodies are not recursive)."""
    doc = model.model_json_schema(mode="validation")
    defs = doc.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return inline(defs[ref.rsplit("/", 1)[1]])
            return {k: inline(v) for k, v in node.items()}
        if isinstance(node, list):
            return [inline(v) for v in node]
        return node

    return inline(doc)


def body_dto(model: type[BaseModel]) -> type[AbstractDTO[Any]]:
    """The ``dto=`` of a handler whose ``data`` parameter documents ``model``."""
    return RawBody[model]  # type: ignore[valid-type]


# ---- declared errors --------------------------------------------------------------------------
ERROR_DESCRIPTIONS = {
    400: "invalid_parameter, missing_parameter, invalid_json or invalid_cursor",
    401: "key_invalid or key_revoked: a missing, unknown or revoked API key",
    403: "insufficient_scope, or tenant_mismatch for a body naming another tenant",
    404: "not_found: no such resource in this tenant and mode",
    409: "state_conflict, idempotency_conflict, entity_locked or connector_in_use",
    413: "request_too_large",
    415: "unsupported_media_type: a body without Content-Type: application/json",
    422: "validation_failed, capability_unbound, listing_early_access or auth_failed",
    429: "rate_limited: retry after Retry-After seconds",
    500: "internal_error",
    502: "connector_upstream_error: the connector's source system failed or was unreachable",
    503: "service_unavailable: the broker or control plane did not answer; retry after "
    "Retry-After seconds",
}
# What every authenticated /v1 operation can answer.
V1 = (400, 401, 403, 429, 500)
# An operation with a request body (POST/PATCH): JSON only, bounded in size.
WITH_BODY = (413, 415)


def errors(*statuses: int) -> dict[int, ResponseSpec]:
    """``responses=`` for an operation: ``statuses`` (plus V1), each the error envelope."""
    wanted = sorted({*V1, *statuses})
    return {
        s: ResponseSpec(
            data_container=ErrorEnvelope,
            description=ERROR_DESCRIPTIONS[s],
            generate_examples=False,
        )
        for s in wanted
    }


def documented(
    *statuses: int, body: type[BaseModel] | None = None, optional_body: bool = False
) -> dict[str, Any]:
    """The OpenAPI keywords of a route decorator: its error ``statuses`` (plus V1, plus 413/415
    when it takes a body), the operation class, and for a ``body`` model the DTO that documents
    it (the handler declares ``data: Model | None = None`` and reads the bytes itself)."""
    kw: dict[str, Any] = {
        "responses": errors(*statuses, *(WITH_BODY if body is not None else ())),
        "operation_class": OptionalBodyOperation if optional_body else FibricOperation,
    }
    if body is not None:
        kw.update(dto=body_dto(body), return_dto=None)
    return kw


def _header(description: str, type_: OpenAPIType = OpenAPIType.STRING) -> OpenAPIHeader:
    return OpenAPIHeader(schema=Schema(type=type_), description=description)


HEADERS: dict[str, OpenAPIHeader] = {
    "Request-Id": _header("The request's id (req_…), also in every error envelope."),
    "Fibric-Version": _header("The API revision that served the request."),
}
RATE_HEADERS: dict[str, OpenAPIHeader] = {
    "X-RateLimit-Limit": _header("Requests allowed per window.", OpenAPIType.INTEGER),
    "X-RateLimit-Remaining": _header("Requests left in the window.", OpenAPIType.INTEGER),
    "X-RateLimit-Reset": _header("Seconds until the window resets.", OpenAPIType.INTEGER),
}
RETRY_AFTER = _header("Seconds to wait before retrying.", OpenAPIType.INTEGER)
# components.headers of the document (api/app.py); responses refer to them
COMPONENT_HEADERS: dict[str, OpenAPIHeader] = {
    **HEADERS,
    **RATE_HEADERS,
    "Retry-After": RETRY_AFTER,
}


def _ref(name: str) -> Reference:
    return Reference(ref=f"#/components/headers/{name}")


@dataclass
class FibricOperation(Operation):
    """Every documented response carries ``Request-Id`` and ``Fibric-Version``; an
    authenticated operation's (but its 401 and 415), the ``X-RateLimit-*`` headers; 429 and 503
    ``Retry-After``."""

    def __post_init__(self) -> None:
        for status, response in (self.responses or {}).items():
            if not isinstance(response, OpenAPIResponse):
                continue
            headers: dict[str, Any] = dict(response.headers or {})
            names = list(HEADERS)
            # an authenticated (/v1) operation, once the key is known (a 401 has no tenant to
            # count against; a 415 is refused before authentication)
            if "401" in (self.responses or {}) and status not in ("401", "415"):
                names += list(RATE_HEADERS)
            if status in ("429", "503"):
                names.append("Retry-After")
            headers.update((n, _ref(n)) for n in names)
            response.headers = headers


@dataclass
class OptionalBodyOperation(FibricOperation):
    """An operation whose body may be omitted (or be ``{}``): every field has a default."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.request_body is not None and not isinstance(self.request_body, Reference):
            self.request_body.required = False
