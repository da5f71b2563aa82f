"""Control-agent replies carry ``ErrorCode`` end to end (issue 10 item 4): the agent refuses with
the enum, the reply crosses the wire as its value and is read back as the same member, and a code
outside the enum is refused when the reply is built or decoded — no free string reaches the api."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from agents.control import Refusal
from schemas.commands import Reply, ReplyError
from schemas.errors import STATUS_OF, ErrorCode
from tests.unit.agents.test_control import Harness


def test_a_refused_command_replies_with_the_enum_member():
    h = Harness()
    err = h.err("operator.pause", operator_id="op_missing")
    assert err.code is ErrorCode.NOT_FOUND
    assert err.status == STATUS_OF[ErrorCode.NOT_FOUND] == 404


def test_a_state_conflict_is_an_enum_code_too():
    h = Harness()
    err = h.err("tenant.create", tenant_id=None, slug="acme")  # the harness made "acme"
    assert err.code is ErrorCode.STATE_CONFLICT


def test_the_reply_round_trips_the_wire_as_the_same_member():
    h = Harness()
    d = h.run("operator.pause", operator_id="op_missing")
    wire = d.reply.model_dump_json()
    assert '"code":"not_found"' in wire  # the documented value on the wire
    back = Reply.model_validate_json(wire)
    assert back.error is not None and back.error.code is ErrorCode.NOT_FOUND


@pytest.mark.parametrize("code", ["no_such_code", "NOT_FOUND", ""])
def test_a_code_outside_the_enum_is_refused(code):
    with pytest.raises(ValidationError):
        ReplyError(status=400, code=code, message="x")
    wire = Reply(
        id="cmd_1",
        reply_to="r",
        ok=False,
        error=ReplyError(status=404, code=ErrorCode.NOT_FOUND, message="x"),
    ).model_dump_json()
    with pytest.raises(ValidationError):
        Reply.model_validate_json(wire.replace('"not_found"', f'"{code}"'))


def test_refusal_builds_its_reply_error_with_the_enum():
    r = Refusal(409, ErrorCode.STATE_CONFLICT, "busy", param="name")
    assert r.error.code is ErrorCode.STATE_CONFLICT and r.error.details == {"param": "name"}
