"""Request bodies: a body naming another tenant is 403 tenant_mismatch on every write route."""

from types import SimpleNamespace

import pytest

from api.body import check_tenancy, read_body, validate
from api.controllers.loop import UndoBody
from schemas.errors import ErrorCode, FibricError

TENANT, RESELLER = "t_01ABC", "r_01XYZ"


class FakeRequest:
    """Only what read_body touches: the body and the scope state the auth guard fills."""

    def __init__(self, body: bytes, auth: object | None) -> None:
        self._body = body
        self.scope = {"state": {"auth": auth} if auth else {}}

    async def body(self) -> bytes:
        return self._body


def auth(reseller: str | None = RESELLER) -> object:
    return SimpleNamespace(tenant=SimpleNamespace(id=TENANT, reseller_id=reseller))


@pytest.mark.parametrize(
    "body,param",
    [
        (b'{"tenant_id": "t_other"}', "tenant_id"),
        (b'{"reseller_id": "r_other", "name": "x"}', "reseller_id"),
        (b'{"tenant_id": 7}', "tenant_id"),
        (b'{"tenant\\u005fid": "t_other"}', "tenant_id"),  # the key spelt with an escape
    ],
)
async def test_a_foreign_tenancy_in_any_body_is_403(body, param):
    with pytest.raises(FibricError) as e:
        await read_body(FakeRequest(body, auth()))  # type: ignore[arg-type]
    assert (e.value.status, e.value.code, e.value.param) == (403, "tenant_mismatch", param)


@pytest.mark.parametrize(
    "body",
    [
        b'{"tenant_id": "t_01ABC", "reseller_id": "r_01XYZ"}',  # the caller's own
        b'{"tenant_id": null}',
        b'{"payload": {"tenant_id": "t_other"}}',  # only top-level fields name the tenancy
        b"[1, 2]",
        b"not json tenant_id",  # left to validate() for its 400
        b"",
    ],
)
async def test_own_nested_or_unparsable_tenancy_passes_through(body):
    assert await read_body(FakeRequest(body, auth())) == body  # type: ignore[arg-type]


def test_a_reseller_on_a_tenant_without_one_is_a_mismatch():
    with pytest.raises(FibricError):
        check_tenancy(b'{"reseller_id": "r_any"}', TENANT, None)
    check_tenancy(b'{"reseller_id": null}', TENANT, None)


@pytest.mark.parametrize(
    "body,code",
    [
        (b"garbage", ErrorCode.INVALID_JSON),
        (b"[]", ErrorCode.INVALID_PARAMETER),
        (b'"x"', ErrorCode.INVALID_PARAMETER),
        (b'{"reason": "x"}', ErrorCode.INVALID_PARAMETER),
    ],
)
def test_undo_accepts_only_an_empty_body_or_object(body, code):
    with pytest.raises(FibricError) as e:
        validate(UndoBody, body, allow_empty=True)
    assert e.value.code is code and e.value.status == 400
    assert validate(UndoBody, b"", allow_empty=True) == UndoBody()
    assert validate(UndoBody, b" {} ", allow_empty=True) == UndoBody()
