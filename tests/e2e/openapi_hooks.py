"""Schemathesis hooks for the contract test (tests/e2e/test_openapi_contract.py), loaded through
SCHEMATHESIS_HOOKS: strategies for the string formats our OpenAPI document uses that JSON
Schema cannot spell out, so a generated "valid" value is one the API accepts."""

from __future__ import annotations

from datetime import datetime

import schemathesis
from hypothesis import strategies as st

# format "cron" (operator schedule): five fields, each `*`, `*/n` or a value in range
_FIELDS = (
    st.integers(0, 59),
    st.integers(0, 23),
    st.integers(1, 28),
    st.integers(1, 12),
    st.integers(0, 6),
)


def _field(values: st.SearchStrategy[int]) -> st.SearchStrategy[str]:
    return st.one_of(
        st.just("*"),
        values.map(str),
        st.integers(1, 9).map(lambda n: f"*/{n}"),
    )


CRON = st.tuples(*(_field(f) for f in _FIELDS)).map(" ".join)

schemathesis.openapi.format("cron", CRON)

# format "date-time" (since/until filters): RFC 3339 with a zone, inside the ledger's range
# (1900–2299, api/controllers/events.py parse_time; outside it is a documented 400)
_ZONES = st.sampled_from(["Z", "+00:00", "+02:00", "-05:30"])
DATE_TIME = st.builds(
    lambda dt, zone: dt.strftime("%Y-%m-%dT%H:%M:%S") + zone,
    st.datetimes(min_value=datetime(1901, 1, 1), max_value=datetime(2298, 12, 31)),
    _ZONES,
)

schemathesis.openapi.format("date-time", DATE_TIME)
