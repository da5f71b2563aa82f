"""since/until: RFC 3339 with a zone, inside what the ledger's DateTime64 columns can hold."""

from datetime import UTC, datetime

import pytest

from api.query import parse_time
from ledger.store import DATETIME_MAX, DATETIME_MIN
from schemas.errors import ErrorCode, FibricError


@pytest.mark.parametrize(
    "raw",
    [
        "0001-01-01T00:00:00Z",  # the repro (a 500 from ClickHouse before)
        "0001-01-01T00:00:00+01:00",  # no UTC instant at all (OverflowError in astimezone)
        "1899-12-31T23:59:59.999999Z",
        "2300-01-01T00:00:00Z",
        "9999-12-31T23:59:59-05:00",
    ],
)
def test_out_of_range_bounds_are_400_naming_the_range(raw):
    with pytest.raises(FibricError) as e:
        parse_time(raw, "since")
    err = e.value
    assert (err.status, err.code, err.param) == (400, ErrorCode.INVALID_PARAMETER, "since")
    assert "1900-01-01T00:00:00Z" in err.message and "2299-12-31T23:59:59.999999Z" in err.message


def test_the_range_ends_are_accepted_and_zones_normalised():
    assert parse_time("1900-01-01T00:00:00Z", "since") == DATETIME_MIN
    assert parse_time("2299-12-31T23:59:59.999999Z", "until") == DATETIME_MAX
    assert parse_time("2026-01-01T02:00:00+02:00", "since") == datetime(2026, 1, 1, tzinfo=UTC)
    assert parse_time(None, "since") is None and parse_time("", "until") is None


@pytest.mark.parametrize("raw", ["yesterday", "2026-01-01T00:00:00", "2026-13-01T00:00:00Z"])
def test_non_timestamps_and_zoneless_times_are_400(raw):
    with pytest.raises(FibricError) as e:
        parse_time(raw, "until")
    assert e.value.code is ErrorCode.INVALID_PARAMETER and e.value.param == "until"
