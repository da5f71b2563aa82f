"""admit() and the edge limits: hostile envelopes become refusal records, never exceptions, and
an admitted event is one every later step of the pipeline can serialise."""

import json

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agents.ingest import Admitted, Coordinates, Refused, admit
from schemas.envelope import DeadLetter
from schemas.limits import MAX_PAYLOAD_BYTES, MAX_PAYLOAD_DEPTH

AT = Coordinates("fibric.events.v1", 0, 7, 1_780_000_000_000)
TENANT = "t_01M84AJACPVQQFPN6PBDS9CG9P"


def known(t: str) -> bool:
    return t == TENANT


def envelope(payload_json: str, tenant: str = TENANT) -> bytes:
    head = f'{{"tenant_id":"{tenant}","source":"k","event_type":"a.b","payload":'
    return (head + payload_json + "}").encode()


def refused(raw: bytes) -> DeadLetter:
    r = admit(raw, AT, known)
    assert isinstance(r, Refused), r
    return r.dead_letter


def test_issue_repro_300_levels_is_an_invalid_envelope_for_the_tenant():
    dl = refused(envelope('{"a":' * 300 + "1" + "}" * 300))
    assert dl.reason == "invalid_envelope" and dl.tenant_id == TENANT
    assert dl.errors[0]["type"] == "MAX_PAYLOAD_DEPTH"
    assert dl.errors[0]["loc"].startswith("payload.a.a")


def test_depth_limit_holds_even_for_an_unknown_tenant():
    # the limit is reported first; the record stays invisible to every tenant
    dl = refused(envelope('{"a":' * 300 + "1" + "}" * 300, tenant="t_nobody"))
    assert dl.reason == "invalid_envelope" and dl.tenant_id == ""


def test_huge_integers_are_refused_not_turned_into_floats():
    for wide in (2**63, 2**64, -(2**63) - 1, 10**40):
        dl = refused(envelope(f'{{"amount":{wide}}}'))
        assert dl.reason == "invalid_envelope" and dl.errors[0]["type"] == "MAX_PAYLOAD_INT"
    r = admit(envelope(f'{{"amount":{2**63 - 1},"f":1e19}}'), AT, known)
    assert isinstance(r, Admitted) and r.event.payload == {"amount": 2**63 - 1, "f": 1e19}


def test_undecodable_text_is_invalid_json():
    for raw in (
        envelope('{"a":"\xff"}').replace(b"\xc3\xbf", b"\xff"),  # invalid UTF-8
        envelope('{"a":"x"}').replace(b'"x"', b'"\xed\xa0\x80"'),  # UTF-8-encoded surrogate
        envelope('{"a":"\\ud800"}'),  # escaped lone surrogate
        envelope('{"a":"x"}').replace(b'"x"', b'"\x00"'),  # raw NUL inside a string
        envelope('{"a":1}') + b"\x00",  # NUL after the document
        envelope('{"a":NaN}'),
        envelope('{"a":1e400}'),
    ):
        dl = refused(raw)
        assert dl.reason == "invalid_json", raw
        dl.model_dump_json()


def test_escaped_nul_is_an_ordinary_character():
    r = admit(envelope('{"a":"x\\u0000y"}'), AT, known)
    assert isinstance(r, Admitted) and r.event.payload == {"a": "x\x00y"}


def test_received_at_outside_what_can_be_stored_is_refused():
    for when in ("0001-01-01T00:00:00Z", "1969-12-31T23:59:59Z", "9999-01-01T00:00:00Z"):
        raw = orjson.dumps(
            {
                "tenant_id": TENANT,
                "source": "k",
                "event_type": "a.b",
                "payload": {},
                "received_at": when,
            }
        )
        dl = refused(raw)
        assert dl.reason == "invalid_envelope" and dl.errors[0]["loc"] == "received_at"


def test_unbounded_envelope_fields_are_bounded():
    for field in ("agent_id", "session_id", "request_id", "reseller_id"):
        raw = orjson.dumps(
            {
                "tenant_id": TENANT,
                "source": "k",
                "event_type": "a.b",
                "payload": {},
                field: "x" * 300,
            }
        )
        assert refused(raw).errors[0]["loc"] == field


# --- the invariant, for any JSON-like document --------------------------------------------

_WIDE_INTS = st.sampled_from([2**63 - 1, 2**63, 2**64 - 1, 2**64, -(2**63), -(2**63) - 1, 10**40])
_TEXT = st.text(st.characters(exclude_categories=()), max_size=20)  # NUL, surrogates included
_LEAF = st.none() | st.booleans() | st.integers() | _WIDE_INTS | st.floats() | _TEXT
_DOC = st.recursive(
    _LEAF,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_TEXT, inner, max_size=4),
    max_leaves=30,
)


def _nest(depth: int, leaf: object) -> object:
    for i in range(depth):
        leaf = {"a": leaf} if i % 2 else [leaf]
    return leaf


_PAYLOAD = st.one_of(
    st.dictionaries(_TEXT, _DOC, max_size=5),
    st.builds(lambda d, leaf: {"p": _nest(d, leaf)}, st.integers(0, 400), _DOC),
    _DOC,  # not always an object
)


def _encode(doc: object, how: str) -> bytes:
    """A producer's bytes: escaped ASCII, raw UTF-8 (surrogates then make it invalid), or
    mangled with a NUL or a stray byte."""
    text = json.dumps(doc, ensure_ascii=how == "ascii")
    raw = text.encode("utf-8", "surrogatepass")
    if how == "nul":
        raw = raw[: len(raw) // 2] + b"\x00" + raw[len(raw) // 2 :]
    elif how == "byte":
        raw = raw[: len(raw) // 2] + b"\xff" + raw[len(raw) // 2 :]
    return raw


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)
@given(payload=_PAYLOAD, how=st.sampled_from(["ascii", "utf8", "nul", "byte"]))
def test_admit_refuses_or_returns_an_event_every_later_step_can_serialise(payload, how):
    doc = {"tenant_id": TENANT, "source": "k", "event_type": "a.b", "payload": payload}
    raw = _encode(doc, how)
    result = admit(raw, AT, known)
    if isinstance(result, Refused):
        # the refusal itself goes to the DLQ and the ledger as JSON
        orjson.loads(result.dead_letter.model_dump_json())
        return
    event = result.event
    # what the worker and the ledger do with an admitted event (streams/app.py, ledger/store.py)
    row = event.model_dump_json()
    ledger_record = b'{"kind":"event","row":' + row.encode() + b"}"
    assert orjson.loads(ledger_record)["row"]["id"] == event.id
    offer = orjson.dumps({"event": event.model_dump(mode="json"), "operator_id": "op_x"})
    stored = orjson.dumps(event.payload)
    # exact: nothing became a float, nothing was dropped
    assert orjson.loads(stored) == event.payload == json.loads(json.dumps(payload))
    assert len(stored) <= MAX_PAYLOAD_BYTES and orjson.loads(offer)["event"]["id"] == event.id


def test_the_property_reaches_both_outcomes():
    """Guards the property test above against generating only refusals (or only events)."""
    deep = {"p": _nest(MAX_PAYLOAD_DEPTH + 5, 1)}
    shallow = {"p": _nest(MAX_PAYLOAD_DEPTH - 2, 1)}
    for payload, kind in ((deep, Refused), (shallow, Admitted)):
        doc = {"tenant_id": TENANT, "source": "k", "event_type": "a.b", "payload": payload}
        assert isinstance(admit(_encode(doc, "ascii"), AT, known), kind)
