"""The openai provider of the model router against a local OpenAI-compatible server over real
HTTP: the prompt carries the outcome, the payload verbatim and the tools' MCP input schemas; the
reply must validate as an ExecutionPlan or the plan is refused with a receipt."""

from __future__ import annotations

import httpx
import pytest

from tests.e2e.test_governed_loop import Loop, fake  # noqa: F401 - fixture
from tests.e2e.test_kafka_pipeline import wait_for

pytestmark = pytest.mark.e2e


def mode(openai_fake, **kw):
    httpx.post(
        openai_fake.url.replace("/v1", "/__fake__/mode"), json=kw, timeout=5
    ).raise_for_status()


def requests_seen(openai_fake):
    return httpx.get(openai_fake.url.replace("/v1", "/__fake__/requests"), timeout=5).json()


def test_openai_model_proposes_a_plan_the_executor_disposes(stack, fake, openai_fake):  # noqa: F811
    mode(openai_fake, reply="plan", errors_before_success=1)  # one 503 first: retried
    loop = Loop(
        stack,
        fake,
        None,
        [{"tool": "order.hold", "decision": "ALLOW", "max_value": 500}],
        capabilities=("order.read", "order.hold"),
    )
    loop.c.patch(f"/v1/operators/{loop.op['id']}", json={"model": "openai:fake-gpt"})
    ev = loop.post("order.created", order_id="2", total=42, customer={"email": "a@example.com"})
    rc = loop.wait_receipts(1, timeout=60)[0]
    assert (rc["tool"], rc["outcome"], rc["idempotency_key"]) == (
        "order.hold",
        "applied",
        "llm-hold:2",
    )
    plan = loop.c.get(f"/v1/plans/{rc['plan_id']}").json()
    assert (
        plan["model"] == "openai:fake-gpt"
        and "risky" in plan["reasoning"]
        and plan["event_id"] == ev["id"]
    )
    req = [r for r in requests_seen(openai_fake) if r["body"]["model"] == "fake-gpt"][-1]
    assert req["authorization"] == "Bearer sk-fake-model-key"
    user = req["body"]["messages"][1]["content"]
    assert loop.op["outcome"] in user
    assert (
        '{"order_id":"2","total":42,"customer":{"email":"a@example.com"}}' in user
    )  # payload verbatim
    assert '"order.hold"' in user and '"order_id"' in user  # tool + its MCP input schema
    assert req["body"]["response_format"]["type"] == "json_schema"


def test_invalid_model_reply_refuses_the_plan(stack, fake, openai_fake):  # noqa: F811
    mode(openai_fake, reply="invalid")
    loop = Loop(
        stack,
        fake,
        None,
        [{"tool": "order.hold", "decision": "ALLOW"}],
        capabilities=("order.hold",),
    )
    loop.c.patch(f"/v1/operators/{loop.op['id']}", json={"model": "openai:fake-gpt"})
    loop.post("order.created", order_id="1", total=1)
    rc = wait_for(lambda: loop.receipts() or None, timeout=60)[0]
    assert rc["outcome"] == "refused" and rc["action_id"] is None
    assert "not a valid ExecutionPlan" in rc["reason"]
    assert fake.count("order.hold") == 0
    mode(openai_fake, reply="plan")
