"""The fast base32 path of id encoding gives exactly the reference encoding."""

from hypothesis import given
from hypothesis import strategies as st

from schemas import ids


@given(st.integers(min_value=0, max_value=(1 << 80) - 1))
def test_random_part_matches_the_reference_encoding(rand):
    assert ids._rand_part(rand) == ids._encode(rand, 16)


@given(st.integers(min_value=0, max_value=253_402_300_799_999))  # up to year 9999
def test_time_part_round_trips(ms):
    assert ids._time_part(ms) == ids._encode(ms, 10)
    made = ids.derived_id("ev", ms, "x")
    assert ids.id_time(made).timestamp() * 1000 == __import__("pytest").approx(ms, abs=1)
