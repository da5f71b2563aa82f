"""Reading and validating JSON request bodies into pydantic models, with envelope errors."""

from __future__ import annotations

from typing import Any, TypeVar

import orjson
from litestar import Request
from pydantic import BaseModel, ValidationError

from schemas.errors import ErrorCode, FibricError

M = TypeVar("M", bound=BaseModel)


async def read_body(request: Request[Any, Any, Any]) -> bytes:
    # Litestar enforces request_max_body_size here (413 before the whole body is buffered).
    return await request.body()


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
