import orjson
from litestar.exceptions import (
    HTTPException,
    MethodNotAllowedException,
    NotFoundException,
    ValidationException,
)

from api.errors import error_response, to_error
from schemas.errors import ERROR_TYPES, STATUS_OF, ErrorCode, FibricError


def test_every_code_has_a_status_with_a_type():
    for code in ErrorCode:
        assert code in STATUS_OF and STATUS_OF[code] in ERROR_TYPES


def test_framework_and_unknown_exceptions_map_to_the_envelope():
    assert (to_error(NotFoundException()).status, to_error(NotFoundException()).code) == (
        404,
        "not_found",
    )
    assert to_error(MethodNotAllowedException()).code == "method_not_allowed"
    assert to_error(ValidationException("bad")).status == 400
    too_big = to_error(HTTPException(status_code=413))
    assert (too_big.status, too_big.code) == (413, "request_too_large")
    boom = to_error(RuntimeError("secret detail"))
    assert (boom.status, boom.code) == (500, "internal_error") and "secret" not in boom.message


def test_error_response_body_and_headers():
    resp = error_response(
        FibricError(ErrorCode.RATE_LIMITED, "slow down", headers={"Retry-After": "7"}), "req_1"
    )
    body = orjson.loads(resp.content)["error"]
    assert (
        resp.status_code == 429
        and body["type"] == "rate_limit_error"
        and body["request_id"] == "req_1"
    )
    assert body["doc_url"].endswith("#rate_limited") and resp.headers["Retry-After"] == "7"
