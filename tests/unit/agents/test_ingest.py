import orjson

from agents.ingest import Admitted, Coordinates, Refused, admit, dedup_key
from schemas.envelope import MAX_PAYLOAD_BYTES

AT = Coordinates("fibric.events.v1", 3, 42, 1_780_000_000_000)
TENANT = "t_01M84AJACPVQQFPN6PBDS9CG9P"


def known(t: str) -> bool:
    return t == TENANT


def env(**kw):
    doc = {
        "tenant_id": TENANT,
        "source": "magento",
        "event_type": "order.created",
        "payload": {"id": 1},
    }
    doc.update(kw)
    return orjson.dumps(doc)


def test_valid_envelope_is_admitted_with_deterministic_identity():
    a = admit(env(), AT, known)
    b = admit(env(), AT, known)
    assert isinstance(a, Admitted) and a == b
    assert a.event.id.startswith("ev_") and a.event.correlation_id.startswith("co_")
    assert a.event.created_at.timestamp() == AT.timestamp_ms / 1000
    assert a.dedup_key is None


def test_producer_supplied_ids_and_idempotency_key_are_kept():
    r = admit(
        env(event_id="ev_01M84AJB4RA9TX61DER03S1XK0", correlation_id="c-1", idempotency_key="k"),
        AT,
        known,
    )
    assert isinstance(r, Admitted)
    assert r.event.id == "ev_01M84AJB4RA9TX61DER03S1XK0" and r.event.correlation_id == "c-1"
    assert r.dedup_key == dedup_key(TENANT, False, "k")


def test_mode_is_part_of_the_dedup_key():
    assert dedup_key(TENANT, True, "k") != dedup_key(TENANT, False, "k")


def refusal(raw):
    r = admit(raw, AT, known)
    assert isinstance(r, Refused)
    return r.dead_letter


def test_invalid_json_is_refused_not_raised():
    dl = refusal(b"{nope")
    assert dl.reason == "invalid_json" and dl.tenant_id == "" and dl.raw == "{nope"
    assert (dl.source_topic, dl.partition, dl.offset) == (AT.topic, AT.partition, AT.offset)


def test_empty_and_non_object_values_are_refused():
    assert refusal(None).reason == "invalid_json"
    assert refusal(b"[1,2]").reason == "invalid_envelope"


def test_schema_violation_names_the_field_and_keeps_the_tenant():
    dl = refusal(env(event_type="nodots"))
    assert dl.reason == "invalid_envelope" and dl.tenant_id == TENANT
    assert dl.errors[0]["loc"] == "event_type"
    dl = refusal(env(payload="not an object", surprise=1))
    assert {e["loc"] for e in dl.errors} == {"payload", "surprise"}


def test_unknown_tenant_is_refused_without_leaking_to_any_tenant():
    dl = refusal(env(tenant_id="t_someone_else"))
    assert dl.reason == "unknown_tenant" and dl.tenant_id == ""


def test_oversized_payload_is_refused():
    dl = refusal(env(payload={"blob": "x" * (MAX_PAYLOAD_BYTES + 1)}))
    assert dl.reason == "payload_too_large" and len(dl.raw) <= 16 * 1024


def test_refusal_ids_are_deterministic():
    assert refusal(b"{nope").id == refusal(b"{nope").id
