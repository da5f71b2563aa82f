import base64
from datetime import UTC, datetime

import orjson
import pytest

from api.pagination import decode_cursor, encode_cursor, fingerprint, list_body, parse_limit
from schemas.errors import ErrorCode, FibricError


@pytest.mark.parametrize("raw,value", [(None, 20), ("", 20), ("1", 1), ("100", 100)])
def test_limit_in_range(raw, value):
    assert parse_limit(raw) == value


@pytest.mark.parametrize(
    "raw",
    # int() accepts the last six; only ASCII digits are a limit
    ["0", "101", "-1", "abc", "1.5", "1" * 5000, " 20 ", "20\n", "+5", "1_0", "٢٠", "２０"],
)
def test_limit_out_of_range_is_an_error_not_clamped(raw):
    with pytest.raises(FibricError) as e:
        parse_limit(raw)
    assert e.value.code is ErrorCode.INVALID_PARAMETER and e.value.status == 400


def test_cursor_round_trip_and_binding_to_filters():
    key = (datetime(2026, 6, 14, 9, 2, 11, 5, tzinfo=UTC), "ev_X")
    cur = encode_cursor(key, {"source": "a", "event_type": None})
    assert cur.startswith("cur_")
    assert decode_cursor(cur, {"source": "a"}) == key
    with pytest.raises(FibricError) as e:
        decode_cursor(cur, {"source": "b"})
    assert e.value.code is ErrorCode.INVALID_CURSOR


@pytest.mark.parametrize("bad", ["cur_", "cur_!!!", "xyz", "cur_" + "A" * 600, "cur_e30"])
def test_garbage_cursors_are_invalid_cursor(bad):
    with pytest.raises(FibricError) as e:
        decode_cursor(bad, {})
    assert e.value.code is ErrorCode.INVALID_CURSOR


def test_list_body_has_cursor_exactly_when_more():
    key = (datetime(2026, 1, 1, tzinfo=UTC), "ev_1")
    assert list_body([], False, None, {})["next_cursor"] is None
    assert list_body([1], False, key, {})["next_cursor"] is None
    assert list_body([1], True, key, {})["next_cursor"].startswith("cur_")


@pytest.mark.parametrize("micros", [-62135596800000000, 253402300799000000])
def test_a_forged_cursor_outside_the_ledgers_time_range_is_invalid_cursor(micros):
    # year 1 and year 9999: valid datetimes ClickHouse's DateTime64 cannot compare
    doc = {"t": micros, "i": "ev_X", "f": fingerprint({})}
    forged = "cur_" + base64.urlsafe_b64encode(orjson.dumps(doc)).decode().rstrip("=")
    with pytest.raises(FibricError) as e:
        decode_cursor(forged, {})
    assert e.value.code is ErrorCode.INVALID_CURSOR
