"""Pure pieces of the connectors package: error mapping, Magento request/response helpers,
the pool's interpretation of tool lists and results, and the fake's search semantics."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode

import pytest
from mcp.shared.exceptions import MCPError
from mcp_types import CONNECTION_CLOSED, REQUEST_TIMEOUT, ToolAnnotations
from mcp_types import Tool as MCPTool

from connectors.errors import ConnectorError, code_for_http_status, parse_error_payload
from connectors.marketplace import load_catalogue
from connectors.pool import (
    ConnectorSpec,
    classify_mcp_error,
    classify_tool_error,
    redact,
    result_payload,
    spec_fingerprint,
    tool_info,
)
from connectors.server import credential_secret, read_env
from connectors.servers.magento import (
    has_notified_comment,
    rest_prefix,
    search_params,
    summarize_order,
    validate_ids,
)
from connectors.upstream import error_for_status, upstream_message
from tests.fakes.magento import make_order, parse_search_criteria, search_orders, seed_orders


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (401, "auth_failed"),
        (403, "auth_failed"),
        (404, "not_found"),
        (400, "invalid_args"),
        (409, "invalid_args"),
        (500, "upstream_error"),
        (503, "upstream_error"),
    ],
)
def test_http_status_mapping(status, code):
    assert code_for_http_status(status) == code


def test_ambiguous_write_statuses_keep_the_outcome_unknown():
    assert error_for_status(504, None, write=True).outcome_unknown
    assert error_for_status(500, None, write=True).outcome_unknown
    assert not error_for_status(503, None, write=True).outcome_unknown  # refused at the door
    assert not error_for_status(500, None, write=False).outcome_unknown
    assert not error_for_status(400, None, write=True).outcome_unknown


def test_magento_messages_are_templated():
    body = {
        "message": "The consumer isn't authorized to access %resources.",
        "parameters": {"resources": "Magento_Sales::hold"},
    }
    assert upstream_message(body, 401) == (
        "The consumer isn't authorized to access Magento_Sales::hold."
    )
    assert upstream_message(
        {"message": "No such entity with %1 = %2", "parameters": ["orderId", "7"]}, 404
    ) == ("No such entity with orderId = 7")
    assert upstream_message(None, 502) == "upstream returned HTTP 502"


def test_error_payload_round_trip():
    err = ConnectorError("not_found", "gone", status=404)
    assert parse_error_payload(err.payload()) == ("not_found", "gone", 404)
    assert parse_error_payload({"error": "text"}) is None
    assert parse_error_payload([1]) is None


def test_credentials_and_env():
    assert credential_secret({"type": "api_key", "key": "k1"}) == "k1"
    assert credential_secret({"type": "oauth2", "access_token": "t"}) == "t"
    assert credential_secret({"type": "basic", "username": "u"}) is None
    env = {
        "FIBRIC_CONNECTOR_CONFIG": '{"base_url": "http://x"}',
        "FIBRIC_CONNECTOR_CREDENTIALS": '{"key": "s3cret"}',
        "FIBRIC_CONNECTOR_STATE_DIR": "/tmp/x",
        "FIBRIC_CONNECTOR_INSTANCE": "cn_1",
    }
    got = read_env("cn-magento", env)
    assert got.config == {"base_url": "http://x"} and got.credentials == {"key": "s3cret"}
    assert "FIBRIC_CONNECTOR_CREDENTIALS" not in env  # removed once read
    assert "s3cret" not in repr(got)


def test_magento_helpers():
    assert rest_prefix("https://store.acme.com") == "/rest/V1"
    assert rest_prefix("https://store.acme.com/rest/") == "/V1"
    q = dict(search_params("increment_id", "000000042", page_size=1))
    assert q == {
        "searchCriteria[filterGroups][0][filters][0][field]": "increment_id",
        "searchCriteria[filterGroups][0][filters][0][value]": "000000042",
        "searchCriteria[filterGroups][0][filters][0][conditionType]": "eq",
        "searchCriteria[pageSize]": "1",
    }
    for bad in (("1/../2", None), (None, "a b"), ("1", "2")):
        with pytest.raises(ConnectorError) as e:
            validate_ids(*bad)
        assert e.value.code == "invalid_args"
    validate_ids("12", None)
    validate_ids(None, "US-0001")


def test_summarize_order_is_deterministic_and_flags_hold_state():
    order = make_order(7, state="holded")
    order["status_histories"] = [{"comment": "hi", "is_customer_notified": 1, "entity_id": 3}]
    s = summarize_order(order)
    assert s == summarize_order(order)
    assert s["on_hold"] and not s["holdable"]
    assert s["status_histories"] == [{"comment": "hi", "is_customer_notified": 1}]
    assert not summarize_order(make_order(8, state="complete"))["holdable"]
    assert summarize_order(make_order(9, state="processing"))["holdable"]
    assert has_notified_comment(order, "hi") and not has_notified_comment(order, "other")


def _tool(meta=None, annotations=None) -> MCPTool:
    return MCPTool(
        name="x.do", input_schema={"type": "object"}, annotations=annotations, _meta=meta
    )


def test_tool_info_prefers_fibric_meta_then_annotations():
    t = tool_info(
        _tool(
            {
                "fibric/side_effect": False,
                "fibric/capability": "x.do",
                "fibric/compensating_tool": None,
            }
        )
    )
    assert (t.side_effect, t.capability, t.compensating_tool) == (False, "x.do", None)
    assert tool_info(_tool(annotations=ToolAnnotations(read_only_hint=True))).side_effect is False
    assert tool_info(_tool(annotations=ToolAnnotations(read_only_hint=False))).side_effect
    assert tool_info(_tool()).side_effect  # says nothing: treated as side-effecting


def test_result_and_error_classification():
    assert result_payload({"a": 1}, ["ignored"]) == {"a": 1}
    assert result_payload(None, ['{"a": 2}']) == {"a": 2}
    assert result_payload(None, ["plain"]) == "plain"
    payload = {"error": {"code": "auth_failed", "message": "no", "status": 401}}
    assert classify_tool_error(payload) == ("auth_failed", "no", 401)
    assert classify_tool_error("1 validation error for x")[0] == "invalid_args"
    assert classify_tool_error("Unknown tool: y")[0] == "unknown_tool"
    assert classify_tool_error("boom")[0] == "upstream_error"
    assert classify_mcp_error(MCPError(code=REQUEST_TIMEOUT, message="t")) == "timeout"
    assert classify_mcp_error(MCPError(code=CONNECTION_CLOSED, message="c")) == (
        "connector_crashed"
    )


def test_spec_fingerprint_tracks_config_and_credentials_only():
    listing = load_catalogue()["cn-magento"]
    base = ConnectorSpec("cn_1", listing, {"base_url": "http://a"}, {"key": "k"})
    same = ConnectorSpec("cn_1", listing, {"base_url": "http://a"}, {"key": "k"})
    assert spec_fingerprint(base) == spec_fingerprint(same)
    for other in (
        ConnectorSpec("cn_1", listing, {"base_url": "http://b"}, {"key": "k"}),
        ConnectorSpec("cn_1", listing, {"base_url": "http://a"}, {"key": "k2"}),
        ConnectorSpec("cn_1", listing, {"base_url": "http://a"}, {"key": "k"}, "http://r/mcp"),
    ):
        assert spec_fingerprint(other) != spec_fingerprint(base)
    assert "k" not in repr(base).split("cn_1")[1].replace("cn-magento", "")


def test_fake_search_criteria_semantics():
    orders = list(seed_orders().values())
    q = parse_qsl(
        urlencode(
            [
                ("searchCriteria[filterGroups][0][filters][0][field]", "state"),
                ("searchCriteria[filterGroups][0][filters][0][value]", "holded"),
                ("searchCriteria[filterGroups][0][filters][1][field]", "state"),
                ("searchCriteria[filterGroups][0][filters][1][value]", "complete"),
                ("searchCriteria[filterGroups][1][filters][0][field]", "entity_id"),
                ("searchCriteria[filterGroups][1][filters][0][value]", "3"),
                ("searchCriteria[filterGroups][1][filters][0][conditionType]", "gteq"),
                ("searchCriteria[pageSize]", "10"),
            ]
        )
    )
    crit = parse_search_criteria(q)
    assert crit is not None
    res = search_orders(orders, crit)
    assert sorted(o["entity_id"] for o in res["items"]) == [3, 4]  # (holded OR complete) AND id>=3
    assert res["total_count"] == 2
    assert res["search_criteria"]["filter_groups"][1]["filters"][0]["condition_type"] == "gteq"
    assert parse_search_criteria([("other", "1")]) is None


def test_redact_masks_credential_values():
    creds = {"type": "api_key", "key": "mg_live_abcdef"}
    assert redact("bad env mg_live_abcdef here", creds) == "bad env *** here"
    assert redact("api_key stays", creds) == "api_key stays"
