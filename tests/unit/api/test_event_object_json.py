"""``Event.object_json`` is ``model_dump(mode="json")`` field for field (POST /v1/events builds
its 201 body with it, decisions §46)."""

from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.envelope import Event

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=10,
)
optional = st.none() | st.text(min_size=1, max_size=10)


@settings(max_examples=100, deadline=None)
@given(
    payload=st.dictionaries(st.text(max_size=6), json_values, max_size=4),
    workspace=optional,
    entity=optional,
    key=optional,
    reseller=optional,
    livemode=st.booleans(),
    micros=st.integers(0, 10**12),
)
def test_object_json_equals_pydantics_json_dump(
    payload, workspace, entity, key, reseller, livemode, micros
):
    event = Event(
        id="ev_01M8Y3BV428S1HQ9NC00000000",
        tenant_id="t_01M8Y3BV428S1HQ9NC00000000",
        reseller_id=reseller,
        livemode=livemode,
        workspace_id=workspace,
        source="shop",
        event_type="order.created",
        correlation_id="co_01M8Y3BV428S1HQ9NC00000000",
        payload=payload,
        entity_key=entity,
        idempotency_key=key,
        request_id="req_01M8Y3BV428S1HQ9NC00000000",
        created_at=datetime(2020, 1, 1, tzinfo=UTC) + timedelta(microseconds=micros),
    )
    assert event.object_json() == event.model_dump(mode="json")
