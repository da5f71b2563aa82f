"""Reading and validating JSON request bodies into pydantic models, with envelope errors.

Every write handler reads its body through :func:`read_body`, which is also where a body that
names another tenant is refused (403 ``tenant_mismatch``): the tenant comes from the key only."""

from __future__ import annotations

from typing import Any, TypeVar

import orjson
from litestar import Request
from pydantic import BaseModel, ValidationError

from schemas.errors import ErrorCode, FibricError

M = TypeVar("M", bound=BaseModel)


# Body fields that name a tenancy, with the caller's value each must equal when present.
_TENANCY_FIELDS = ("tenant_id", "reseller_id")
# A body can only name them if one of these byte strings occurs (a JSON key may also be spelt
# with \u escapes); other bodies skip the extra parse, which keeps ingestion's hot path cheap.
_TENANCY_HINTS = (b"tenant_id", b"reseller_id", b"\\u")


async def read_body(request: Request[Any, Any, Any]) -> bytes:
    # Litestar enforces request_max_body_size here (413 before the whole body is buffered).
    body = await request.body()
    auth = request.scope.get("state", {}).get("auth")
    if auth is not None and any(hint in body for hint in _TENANCY_HINTS):
        check_tenancy(body, auth.tenant.id, auth.tenant.reseller_id)
    return body


def check_tenancy(body: bytes, tenant_id: str, reseller_id: str | None) -> None:
    """403 ``tenant_mismatch`` when a JSON object body sets ``tenant_id``/``reseller_id`` to
    anything but the caller's own (null counts as unset). Other bodies are left to validate()."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return
    if not isinstance(doc, dict):
        return
    own = {"tenant_id": tenant_id, "reseller_id": reseller_id}
    for name in _TENANCY_FIELDS:
        value = doc.get(name)
        if value is not None and value != own[name]:
            raise FibricError(
                ErrorCode.TENANT_MISMATCH,
                f"{name} in the body does not match the API key's tenant.",
                param=name,
            )


def parse_json(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise FibricError(
            ErrorCode.INVALID_JSON, f"The request body is not valid JSON: {exc}"
        ) from None


def validate(model: type[M], body: bytes, *, allow_empty: bool = False) -> M:
    if not body.strip():
        if allow_empty:
            return model()
        raise FibricError(ErrorCode.MISSING_PARAMETER, "A JSON request body is required.")
    doc = parse_json(body)
    if not isinstance(doc, dict):
        raise FibricError(ErrorCode.INVALID_PARAMETER, "The request body must be a JSON object.")
    try:
        return model.model_validate(doc)
    except ValidationError as exc:
        raise validation_error(exc) from None


def validation_error(exc: ValidationError) -> FibricError:
    errors = exc.errors(include_url=False, include_input=False, include_context=False)
    first = errors[0]
    param = ".".join(str(p) for p in first["loc"]) or None
    missing = first["type"] == "missing"
    code = ErrorCode.MISSING_PARAMETER if missing else ErrorCode.INVALID_PARAMETER
    if missing:
        message = f"{param} is required."
    elif first["type"] == "extra_forbidden":
        message = f"{param} is not a recognised parameter."
    else:
        message = f"{param}: {first['msg']}."
    details = [{"param": ".".join(str(p) for p in e["loc"]), "message": e["msg"]} for e in errors]
    return FibricError(code, message, param=param, details={"errors": details})
