from datetime import UTC, datetime

from schemas.ids import derived_id, id_time, new_id


def test_new_id_has_prefix_and_fixed_length():
    i = new_id("ev")
    assert i.startswith("ev_") and len(i) == 3 + 26


def test_ids_sort_by_creation_time():
    a = new_id("ev", at_ms=1_700_000_000_000)
    b = new_id("ev", at_ms=1_700_000_000_001)
    assert a < b


def test_derived_id_is_deterministic_and_prefix_sensitive():
    assert derived_id("ev", 5, "t", 1, 2) == derived_id("ev", 5, "t", 1, 2)
    assert derived_id("ev", 5, "t", 1, 2) != derived_id("ev", 5, "t", 1, 3)
    assert derived_id("ev", 5, "x")[3:] != derived_id("dl", 5, "x")[3:]


def test_id_time_round_trips():
    at = datetime(2026, 6, 14, 9, 2, 11, 123000, tzinfo=UTC)
    assert id_time(new_id("ev", int(at.timestamp() * 1000))) == at
    assert id_time("ev_short") is None
    assert id_time("ev_" + "!" * 26) is None
