"""ClickHouse bulk-insert ceiling, run as a child process by :mod:`benchmarks.ceilings`:
``python -m benchmarks.chinsert --dir D --rows N --batch B --out result.json``.

Creates the ledger schema in a fresh chDB path (``ledger.store.LedgerStore.open``, the real
migrations), builds N event rows of the S1 shape (the real ``admit`` + ``event_row`` on the
benchmark envelope), and times ``client.insert`` of B-row batches through clickhouse-connect.
It also times, per row, what the ledger sink does in Python before inserting (decode the ledger
record JSON, validate the Event, build the row) and the per-batch "ids already stored?" query,
so the sink's own costs can be compared with the insert.
"""

from __future__ import annotations

import argparse
import time
from datetime import timedelta
from pathlib import Path

import orjson

from agents.ingest import Admitted, Coordinates, admit
from benchmarks.common import envelope
from ledger.store import EVENT_COLUMNS, LedgerStore, event_row
from schemas.envelope import Event, LedgerRecord

TENANT = "t_BENCHCLICKHOUSE0000000000"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", required=True)
    ap.add_argument("--rows", type=int, required=True)
    ap.add_argument("--batch", type=int, required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)

    path = Path(a.dir)
    path.mkdir(parents=True, exist_ok=True)
    store = LedgerStore(f"chdb://{path}")
    store.open()
    client = store._client  # noqa: SLF001 - the same clickhouse-connect client the sink uses

    now_ms = int(time.time() * 1000)
    events: list[Event] = []
    for i in range(a.rows):
        r = admit(
            envelope(i, TENANT, run="ch"),
            Coordinates("bench", i % 8, i, now_ms + i // 100),
            lambda t: True,
        )
        assert isinstance(r, Admitted)
        events.append(r.event)
    ledger_json = [
        orjson.dumps(
            LedgerRecord(kind="event", row=e.model_dump(mode="json")).model_dump(mode="json")
        )
        for e in events[: min(len(events), 20_000)]
    ]

    # what the sink does per row in Python before inserting
    t0 = time.perf_counter()
    for raw in ledger_json:
        rec = LedgerRecord.model_validate_json(raw)
        event_row(Event.model_validate(rec.row))
    decode_us = (time.perf_counter() - t0) / len(ledger_json) * 1e6

    rows = [event_row(e) for e in events]
    cols = list(EVENT_COLUMNS)
    client.insert("events", rows[: min(1000, len(rows))], column_names=cols)  # warm-up
    client.command("TRUNCATE TABLE events")

    insert_s = 0.0
    query_s = 0.0
    batches = 0
    for start in range(0, len(rows), a.batch):
        chunk = rows[start : start + a.batch]
        evs = events[start : start + a.batch]
        ids = [e.id for e in evs]
        lo = min(e.created_at for e in evs) - timedelta(microseconds=1)
        hi = max(e.created_at for e in evs) + timedelta(microseconds=1)
        q0 = time.perf_counter()
        client.query(
            "SELECT id FROM events WHERE created_at BETWEEN {lo:DateTime64(6, 'UTC')} AND "
            "{hi:DateTime64(6, 'UTC')} AND id IN {ids:Array(String)}",
            parameters={"lo": lo, "hi": hi, "ids": ids},
        )
        q1 = time.perf_counter()
        client.insert("events", chunk, column_names=cols)
        insert_s += time.perf_counter() - q1
        query_s += q1 - q0
        batches += 1
    stored = client.query("SELECT count() FROM events").result_rows[0][0]
    store.close()

    result = {
        "rows": a.rows,
        "batch": a.batch,
        "rows_stored": int(stored),
        "insert_rows_per_s": round(a.rows / insert_s),
        "insert_s": round(insert_s, 3),
        "existing_ids_query_ms_per_batch": round(query_s / batches * 1000, 1),
        "sink_path_rows_per_s": round(a.rows / (insert_s + query_s + decode_us * a.rows / 1e6)),
        "sink_decode_us_per_row": round(decode_us, 1),
    }
    Path(a.out).write_text(orjson.dumps(result).decode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
