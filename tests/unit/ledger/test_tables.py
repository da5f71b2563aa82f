"""One spec per ledger table: every ledger record kind has one, and the names agree with the
wire contract."""

from ledger.tables import TABLES
from schemas.envelope import LedgerRecord
from streams.topics import LEDGER_KINDS


def test_every_ledger_kind_has_one_table_spec():
    wire = set(LedgerRecord.model_fields["kind"].annotation.__args__)
    assert set(TABLES) == wire == set(LEDGER_KINDS)
    assert len({s.table for s in TABLES.values()}) == len(TABLES)


def test_specs_name_their_time_column_among_their_columns():
    for spec in TABLES.values():
        assert spec.time_col in spec.columns, spec.table
        assert "id" in spec.columns, spec.table
