from itertools import permutations

import pytest

from agents.policy import evaluate
from schemas.operator import Guardrail

SEED = [
    Guardrail(tool="order.hold", decision="ALLOW", max_value=500),
    Guardrail(tool="order.notify", decision="ALERT"),
]


def ev(rules, tool="order.hold", value=120.0, side_effect=True, names=("cn_1", "magento-us-store")):
    return evaluate(rules, tool=tool, side_effect=side_effect, value=value, connector_names=names)


def test_seed_guardrails():
    assert ev(SEED).decision == "ALLOW" and ev(SEED).rule["index"] == 0
    assert ev(SEED, value=501).decision == "BLOCK" and "exceeds" in ev(SEED, value=501).reason
    assert ev(SEED, value=None).decision == "BLOCK"  # a ceiling with no value fails closed
    assert ev(SEED, tool="order.notify", value=None).decision == "ALERT"
    assert (
        ev(SEED, tool="order.cancel").decision == "BLOCK"
        and ev(SEED, tool="order.cancel").rule is None
    )


def test_default_closed_and_reads_allowed():
    assert ev([]).decision == "BLOCK"
    assert ev([], tool="order.read", side_effect=False).decision == "ALLOW"


def test_connector_matcher():
    rules = [Guardrail(connector="magento-eu-store", tool="order.hold", decision="ALLOW")]
    assert ev(rules).decision == "BLOCK"
    assert ev(rules, names=("cn_2", "magento-eu-store")).decision == "ALLOW"


def test_precedence_block_over_alert_over_allow_and_order_independence():
    rules = [
        Guardrail(tool="order.hold", decision="ALLOW"),
        Guardrail(decision="ALERT"),
        Guardrail(tool="order.hold", decision="ALLOW", max_value=100),
    ]
    for perm in permutations(rules):
        assert ev(list(perm), value=50).decision == "ALERT"
        assert ev(list(perm), value=150).decision == "BLOCK"


@pytest.mark.parametrize("value", [0, 500])
def test_ceiling_is_inclusive(value):
    assert ev(SEED, value=value).decision == "ALLOW"
